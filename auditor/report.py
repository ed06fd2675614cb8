"""The HTML report: results -> plain view-model dataclasses -> jinja2 (autoescape) -> one file.

Templates only read the view model. Images are inlined as data URIs so the file opens
anywhere, offline; tables are rendered here, on the server, so the report reads even
where a CI viewer blocks scripts (the report has none).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.gates import exit_code, verdict
from auditor.results import Finding, Results

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}


@dataclass(frozen=True)
class Tile:
    name: str
    status: str
    score: str
    css: str


@dataclass(frozen=True)
class Figure:
    caption: str
    src: str  # data URI


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
    error: str | None
    reason: str | None
    template: str


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


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def build_view(results: Results, out: Path) -> ReportView:
    from auditor.probes.base import available_probes

    registry = available_probes()
    sections, tiles = [], []
    for name, p in results.probes.items():
        css = score_css(p.score, p.status)
        score = fmt(p.score) if p.status == "ok" else p.status
        tiles.append(Tile(name=name, status=p.status, score=score, css=css))
        captions = p.details.get("captions", {})
        figures, files = [], []
        for rel in p.artifacts:
            path = out / rel
            if rel.endswith(".png") and path.is_file():
                figures.append(Figure(caption=captions.get(rel, Path(rel).stem.replace("_", " ")), src=_data_uri(path)))
            else:
                files.append(rel)
        findings = sorted(p.findings, key=lambda f: SEVERITY_ORDER[f.severity])
        sections.append(Section(
            name=name, description=getattr(registry.get(name), "description", ""), status=p.status, score=score,
            css=css, seconds=p.seconds, metrics=[(k, fmt(v)) for k, v in p.metrics.items()], findings=findings,
            figures=figures, files=files, details=p.details, error=p.error, reason=p.reason,
            template=f"probes/{name}.html.j2"))
    gates = [GateRow(rule=g.rule, value=fmt(g.value), result="pass" if g.passed else ("warn" if g.warn else "FAIL"),
                     css="good" if g.passed else ("warn" if g.warn else "bad"), message=g.message)
             for g in results.gates]
    code = exit_code(results)
    model = dict(results.model)
    notes = model.pop("notes", []) or []
    if results.run.get("partial"):
        notes.insert(0, f"Partial report: {results.run['partial']}.")
    if not results.data.get("labelled", True):
        notes.append("Label-free data: every probe measures agreement with the model's own clean predictions, "
                     "not accuracy against ground truth.")
    return ReportView(
        title=f"Audit of {results.model['name']}", verdict=verdict(results),
        verdict_css="warn" if results.run.get("partial") else {0: "good", 1: "bad", 3: "warn"}[code], score=fmt(results.score),
        score_css=score_css(results.score), tiles=tiles, gates=gates, sections=sections,
        model=[(k, fact(v)) for k, v in model.items()], data=[(k, fact(v)) for k, v in results.data.items()],
        run=[(k, fact(v)) for k, v in results.run.items()], notes=notes)


def environment():
    from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=ChoiceLoader([PackageLoader("reports", "templates")]),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_report(results: Results, out: Path) -> Path:
    """Write <out>/report.html atomically and return its path."""
    out = Path(out)
    html = environment().get_template("report.html.j2").render(view=build_view(results, out), fmt=fmt, heat=heat)
    path = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
