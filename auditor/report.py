"""The HTML report: results -> plain view-model dataclasses -> jinja2 (autoescape) -> one file.

Templates only read the view model. Images are inlined as data URIs so the file opens
anywhere, offline; tables are rendered here, on the server, so the report reads even
where a CI viewer blocks scripts (its one inline script only sorts tables and opens folded
ones for printing).
"""

from __future__ import annotations

import base64
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    PrefixLoader,
    StrictUndefined,
    TemplateNotFound,
    select_autoescape,
)
from PIL import Image

from auditor.files import write_text_atomic
from auditor.gates import exit_code, verdict
from auditor.headlines import SEVERITY_ORDER, KeyFinding, key_findings, section_order
from auditor.probes.base import Probe, registered_probes
from auditor.results import Finding, ProbeResult, Results

# A default run's images come to about 2 MB; past this budget every image is scaled down together,
# so the page stays far below the 15 MB a CI artifact viewer or a mail attachment tolerates.
IMAGE_BUDGET_BYTES = 10 * 2**20
MAX_IMAGE_WIDTH = 1600  # px: wider than any report column; the full-size file stays beside the report


@dataclass(frozen=True)
class Tile:
    name: str
    status: str
    score: str
    css: str
    note: str
    ci: str = ""  # the score's 95% interval over the images


@dataclass(frozen=True)
class Figure:
    caption: str
    src: str  # data URI
    path: str  # the full-size artifact, relative to the report


@dataclass(frozen=True)
class Section:
    name: str
    description: str
    status: str
    score: str
    css: str
    seconds: float
    metrics: list[tuple[str, str]]
    findings: list[Finding]
    figures: list[Figure]
    files: list[str]  # non-image artifacts, relative paths
    details: dict[str, Any]
    view: Any  # what the probe's template reads: Probe.view(details) (the details themselves by default)
    error: str | None
    reason: str | None
    template: str
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> 95% [low, high]
    unmeasured: dict[str, Any] | None = None  # ProbeResult.unmeasured
    nothing: bool = False  # unmeasured, and its figures are null: a reference with nothing in it

    def ci(self, *keys: str) -> str:
        """The 95% interval of the first of `keys` the probe has one for, as "low–high"; '' where none has."""
        return next((interval_text(self.intervals[k]) for k in keys if k in self.intervals), "")

    def ci_task(self, prefix: str, suffix: str) -> str:
        """The interval of PREFIX + the task's metric (accuracy, miou or map50) + SUFFIX."""
        return self.ci(*(f"{prefix}{m}{suffix}" for m in TASK_METRICS))


TASK_METRICS = ("accuracy", "miou", "map50")


def interval_text(interval) -> str:
    return f"{fmt(float(interval[0]))}–{fmt(float(interval[1]))}"


@dataclass(frozen=True)
class GateRow:
    rule: str
    value: str
    result: str
    css: str
    message: str


@dataclass(frozen=True)
class ReportView:
    title: str
    verdict: str
    verdict_css: str
    score: str
    score_css: str
    tiles: list[Tile]
    gates: list[GateRow]
    sections: list[Section]
    key_findings: list[KeyFinding]
    card: list[tuple[str, str]]  # the model card at the top
    model: list[tuple[str, str]]
    data: list[tuple[str, str]]
    run: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def verdict_css(results: Results) -> str:
    """The verdict's colour: green passed, red a failed gate or figures not measured, amber incomplete."""
    return "warn" if results.run.get("partial") else {0: "good", 1: "bad", 3: "warn"}[exit_code(results)]


def fact(value: Any) -> str:
    """Facts keep their precision (a mean of 0.1307 stays 0.1307)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fact(v) for v in value) or "—"
    return fmt(value)


def score_css(score: float | None, status: str = "ok") -> str:
    if status == "failed":
        return "bad"
    if status == "skipped" or score is None:
        return "neutral"
    return "good" if score >= 0.8 else "warn" if score >= 0.5 else "bad"


def heat(ratio: float | None) -> str:
    """Background for a heat-map cell: red (0) through amber to green (1) by the share of clean kept."""
    if ratio is None:
        return "transparent"
    r = min(max(float(ratio), 0.0), 1.0)
    return f"hsl({round(120 * r * r)}, 70%, {round(88 - 6 * r)}%)"


def model_card(results: Results) -> list[tuple[str, str]]:
    """What was audited, on what, where and with what: the rows a reviewer checks before the figures."""
    m, d, r = results.model, results.data, results.run
    rows = [("model", f"{m['name']} ({m['task']}, {m['source']})")]
    if m.get("parameters") is not None:
        rows.append(
            ("parameters", f"{m['parameters']:,}" if isinstance(m["parameters"], int) else fact(m["parameters"]))
        )
    if m.get("input"):
        rows.append(("input", fact(m["input"]) + (f", {m['classes']} classes" if m.get("classes") else "")))
    if m.get("sha256"):
        rows.append(("sha256", str(m["sha256"])))
    rows.append(
        (
            "data",
            f"{d['name']}: {d['n']} images, {'labelled' if d.get('labelled', True) else 'label-free'}"
            + (f", {d['skipped']} unreadable left out" if d.get("skipped") else ""),
        )
    )
    memory = [
        f"{r[k]:.2g} GiB {what}"
        for k, what in (("peak_memory_gib", "RAM"), ("gpu_peak_memory_gib", "GPU"))
        if isinstance(r.get(k), (int, float))
    ]
    rows.append(("device", f"{r['device']}" + (f"; peak {', '.join(memory)}" if memory else "")))
    rows.append(
        (
            "run",
            f"{r['seconds']:.1f} s, seed {r['seed']}" + (f", finished {r['finished']}" if r.get("finished") else ""),
        )
    )
    versions = [f"auditor {r['version']}"] + [f"{k} {r[k]}" for k in ("torch", "python") if r.get(k)]
    rows.append(("tool", ", ".join(versions)))
    return rows


def encode_images(paths: list[Path], budget: int = IMAGE_BUDGET_BYTES, max_width: int = MAX_IMAGE_WIDTH) -> list[str]:
    """Data URIs for the report, under `budget` bytes together.

    Each image is capped at `max_width` and kept as PNG (sharp text and edges) unless JPEG is much
    smaller (photographic galleries); when the lot still exceeds the budget, all are scaled down by
    one common factor and encoded again.
    """
    images = []
    for path in paths:
        with Image.open(path) as im:
            im.load()
            images.append(im.convert("RGBA") if im.mode in ("P", "LA") else im.copy())
    scale = 1.0
    for _ in range(6):
        encoded = [_encode(im, scale, max_width) for im in images]
        total = sum(len(e) for e in encoded)
        if total <= budget:
            break
        scale *= max(0.3, min(0.9, (budget / total) ** 0.5 * 0.95))
    return encoded


def _encode(im, scale: float, max_width: int) -> str:
    width = min(im.width * scale, max_width)
    if width < im.width:
        height = max(1, round(im.height * width / im.width))
        im = im.resize((max(1, round(width)), height), Image.LANCZOS)
    png = io.BytesIO()
    im.save(png, format="PNG", optimize=True)
    data, mime = png.getvalue(), "image/png"
    if len(data) > 100_000:
        flat = im
        if im.mode in ("RGBA", "LA"):
            flat = Image.new("RGB", im.size, "white")
            flat.paste(im, mask=im.getchannel("A"))
        jpeg = io.BytesIO()
        flat.convert("RGB").save(jpeg, format="JPEG", quality=88, optimize=True)
        if len(jpeg.getvalue()) < 0.6 * len(data):
            data, mime = jpeg.getvalue(), "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def build_view(results: Results, out: Path, templates: dict[str, str] | None = None) -> ReportView:
    """The report's view model; `templates`: probe -> the template its section is rendered with
    (default: section_templates())."""
    registry = registered_probes()
    if templates is None:
        templates, _ = section_templates(results.probes, registry)
    order = section_order(results.probes)
    images = [
        (name, rel)
        for name in order
        for rel in results.probes[name].artifacts
        if rel.endswith(".png") and (out / rel).is_file()
    ]
    uris = dict(zip(images, encode_images([out / rel for _, rel in images])))
    sections = [
        _section(name, results.probes[name], registry.get(name), templates.get(name, GENERIC_TEMPLATE), uris)
        for name in order
    ]
    tiles = [
        Tile(
            name=s.name,
            status=s.status,
            score=s.score,
            css=s.css,
            note=_tile_note(results.probes[s.name]),
            ci=s.ci("score"),
        )
        for s in sections
    ]
    gates = [
        GateRow(
            rule=g.rule,
            value=fmt(g.value),
            result="pass" if g.passed else ("warn" if g.warn else "FAIL"),
            css="good" if g.passed else ("warn" if g.warn else "bad"),
            message=g.message,
        )
        for g in results.gates
    ]
    model = dict(results.model)
    return ReportView(
        title=f"Audit of {results.model['name']}",
        verdict=verdict(results),
        verdict_css=verdict_css(results),
        score=fmt(results.score),
        score_css=score_css(results.score),
        tiles=tiles,
        gates=gates,
        sections=sections,
        key_findings=key_findings(results, order),
        card=model_card(results),
        model=[(k, fact(v)) for k, v in model.items() if k != "notes"],
        data=[(k, fact(v)) for k, v in results.data.items()],
        run=[(k, fact(v)) for k, v in results.run.items()],
        notes=_notes(results),
    )


def _section(name: str, p: ProbeResult, probe: type[Probe] | None, template: str, uris: dict) -> Section:
    """One probe's section: its figures inlined (other artifacts listed), findings by severity."""
    captions = p.details.get("captions", {})
    figures, files = [], []
    for rel in p.artifacts:
        if (name, rel) in uris:
            caption = captions.get(rel, Path(rel).stem.replace("_", " "))
            figures.append(Figure(caption=caption, src=uris[(name, rel)], path=rel))
        else:
            files.append(rel)
    gone = set(p.unmeasured["metrics"]) if p.unmeasured else set()
    nothing = bool(gone) and all(p.metrics.get(k) is None for k in gone if k != "score")
    if nothing:  # no details for the probe's own template to read: its findings and null metrics say it all
        template, probe_view = "probes/_generic.html.j2", p.details
    else:
        probe_view = probe.view(p.details) if probe is not None and p.status == "ok" else p.details

    def value(k, v) -> str:
        return f"{fmt(v)} (not meaningful)" if k in gone and v is not None else fmt(v)

    return Section(
        name=name,
        description=getattr(probe, "description", ""),
        status=p.status,
        score=fmt(p.score) if p.status == "ok" else p.status,
        css=score_css(None if p.unmeasured else p.score, p.status),  # a score that measures nothing: no colour
        seconds=p.seconds,
        metrics=[
            (k, value(k, v), interval_text(p.intervals[k]) if k in p.intervals else "") for k, v in p.metrics.items()
        ],
        findings=sorted(p.findings, key=lambda f: SEVERITY_ORDER[f.severity]),
        figures=figures,
        files=files,
        details=p.details,
        view=probe_view,
        error=p.error,
        reason=p.reason,
        template=template,
        intervals=p.intervals,
        unmeasured=p.unmeasured,
        nothing=nothing,
    )


def _tile_note(p: ProbeResult) -> str:
    if p.status == "ok" and p.unmeasured:
        return "nothing measured" if p.score is None else "not meaningful"
    return {"skipped": "not run: see why", "failed": "error: see section"}.get(
        p.status, "informational" if p.score is None else f"{p.seconds:.1f} s"
    )


def _notes(results: Results) -> list[str]:
    """What the reader must know before the figures: the model's own notes, a partial run, label-free data."""
    notes = list(results.model.get("notes", []) or [])
    if results.run.get("partial"):
        notes.insert(0, f"Partial report: {results.run['partial']}.")
    if not results.data.get("labelled", True):
        notes.append(
            "Label-free data: every probe measures agreement with the model's own clean predictions, "
            "not accuracy against ground truth."
        )
    return notes


# ---- templates ---------------------------------------------------------------------------------------

GENERIC_TEMPLATE = "probes/_generic.html.j2"  # findings and figures, for a probe that brings no template
OWN_PREFIX = "@"  # "@PROBE/FILE": a template that ships beside its probe's module


def probe_folder(probe: type[Probe]) -> Path | None:
    """The folder of the module that defines the probe: where a probe ships its own template."""
    file = getattr(sys.modules.get(probe.__module__), "__file__", None)
    return Path(file).parent if file else None


def section_templates(names, registry: dict[str, type[Probe]]) -> tuple[dict[str, str], dict[str, Path]]:
    """(probe -> template name, probe -> folder of its own template). A probe's `template` is looked up
    beside its module first (a third-party probe ships it as package data), then among the report's own
    templates (the built-ins keep theirs in reports/templates/probes); none, or not found: the generic one."""
    names_of, folders = {}, {}
    shared = environment()
    for name in names:
        probe = registry.get(name)
        own = probe_folder(probe) if probe is not None and probe.template else None
        if own is not None and (own / probe.template).is_file():
            names_of[name], folders[name] = f"{OWN_PREFIX}{name}/{probe.template}", own
        elif probe is not None and probe.template and _exists(shared, probe.template):
            names_of[name] = probe.template
        else:
            names_of[name] = GENERIC_TEMPLATE
    return names_of, folders


def _exists(env: Environment, name: str) -> bool:
    try:
        env.get_template(name)
    except TemplateNotFound:
        return False
    return True


def environment(own_templates: dict[str, Path] | None = None) -> Environment:
    """jinja2 with autoescaping and strict undefined names. The report's templates (package data of
    `reports`), and each probe's own folder under "@PROBE/" (see section_templates)."""
    own = {f"{OWN_PREFIX}{name}": FileSystemLoader(folder) for name, folder in (own_templates or {}).items()}
    return Environment(
        loader=ChoiceLoader([PrefixLoader(own, delimiter="/"), PackageLoader("reports", "templates")]),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(results: Results, out: Path) -> Path:
    """Write <out>/report.html atomically and return its path."""
    out = Path(out)
    templates, folders = section_templates(results.probes, registered_probes())
    view = build_view(results, out, templates)
    html = environment(folders).get_template("report.html.j2").render(view=view, fmt=fmt, heat=heat)
    return write_text_atomic(out / "report.html", html)
