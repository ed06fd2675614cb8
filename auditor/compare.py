"""Results side by side: `audit diff` (a table and a verdict for CI) and `audit compare` (one HTML page).

Pure functions over loaded Results: rows first, rendering second. Which way a metric is
better comes from the probe that reports it (`metric_direction`); the CLI only loads the
files, picks a renderer and turns the verdict into an exit code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from auditor.errors import AuditError, did_you_mean
from auditor.files import write_text_atomic
from auditor.gates import md_text, verdict
from auditor.headlines import section_order
from auditor.noise import metric_change, same_images
from auditor.probes.base import metric_direction
from auditor.report import environment, fact, fmt, interval_text, verdict_css
from auditor.results import Results
from auditor.stats import Change

DEFAULT_GATED = "score,*.score"  # the run's score and every probe's
MD_ROWS = 1000  # rows a Markdown diff shows at most: a CI job summary must stay well under 1 MiB
DIRECTION_MARK = {1: "↑", -1: "↓", 0: ""}
DIRECTION_TEXT = {1: "higher is better", -1: "lower is better", 0: "neither better nor worse"}


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def metric_values(results: Results) -> dict[str, tuple[str | None, str, float | None]]:
    """`probe.metric` -> (probe, metric, value), the run's `score` first, then each probe's score and metrics.

    A probe that ran without a score (informational) has no score row; one that failed or was skipped
    keeps it, empty, so that a score lost to a crash reads as missing.
    """
    out: dict[str, tuple[str | None, str, float | None]] = {"score": (None, "score", results.score)}
    for name, p in results.probes.items():
        if p.score is not None or p.status != "ok":
            out[f"{name}.score"] = (name, "score", p.score)
        for metric, value in p.metrics.items():
            out[f"{name}.{metric}"] = (name, metric, value)
    return out


# ---- audit diff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffRow:
    key: str  # `probe.metric`, or `score` for the run's
    base: float | None
    new: float | None
    direction: int  # +1 higher is better, -1 lower, 0 neither
    gated: bool
    max_drop: float
    noise: Change | None = None  # whether the change is beyond noise, and how that was judged
    significant: bool = False  # a gated row fails only on a change beyond noise (--significant)

    @property
    def change(self) -> float | None:
        return None if self.base is None or self.new is None else self.new - self.base

    @property
    def worse_by(self) -> float | None:
        """How much worse NEW is than BASE by the metric's direction (negative: better)."""
        if self.change is None or self.direction == 0:
            return None
        return round(-self.change * self.direction, 12) + 0.0  # rounded: 0.45 - 0.43 is not 0.0200000000001

    @property
    def result(self) -> str:
        if self.base is not None and self.new is None:
            return "missing"
        if self.change is None:
            return "n/a"
        if _same(self.base, self.new):
            return "same"
        if self.direction == 0:
            return "changed"
        return "worse" if self.worse_by > 0 else "better"

    @property
    def failed(self) -> bool:
        if not self.gated:
            return False
        if self.result == "missing":
            return True
        worse = self.worse_by is not None and self.worse_by > self.max_drop
        return worse and not (self.significant and self.within_noise)

    @property
    def within_noise(self) -> bool:
        return self.noise is not None and self.noise.beyond_noise is False

    @property
    def noise_text(self) -> str:
        """'within' or 'beyond' (noise) for a changed metric with a test; '' otherwise."""
        if self.noise is None or self.noise.beyond_noise is None or self.result in ("same", "n/a", "missing"):
            return ""
        return "beyond" if self.noise.beyond_noise else "within"

    @property
    def gate(self) -> str:
        return ("FAIL" if self.failed else "ok") if self.gated else ""


@dataclass(frozen=True)
class Diff:
    base_label: str
    new_label: str
    base_about: str  # "MODEL on DATA (N images)"
    new_about: str
    rows: list[DiffRow]  # gated first, then the changed, then the rest; each group in results order
    patterns: tuple[str, ...]
    max_drop: float
    notes: list[str]
    significant: bool = False  # gated rows fail only on a change beyond noise

    @property
    def failures(self) -> list[DiffRow]:
        return [r for r in self.rows if r.failed]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    @property
    def verdict(self) -> str:
        gated = [r for r in self.rows if r.gated]
        scope = f"{len(gated)} gated metric{'s' if len(gated) != 1 else ''} ({', '.join(self.patterns)})"
        beyond = " beyond noise" if self.significant else ""
        if not self.failures:
            return f"PASSED: none of {scope} got worse by more than {self.max_drop:g}{beyond}"
        worst = ", ".join(
            f"{r.key} {_signed(r.change)}" if r.result != "missing" else f"{r.key} missing" for r in self.failures[:3]
        )
        more = f" and {len(self.failures) - 3} more" if len(self.failures) > 3 else ""
        return (
            f"FAILED: {len(self.failures)} of {scope} got worse by more than {self.max_drop:g}{beyond}: {worst}{more}"
        )

    @property
    def tally(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.result] = counts.get(r.result, 0) + 1
        words = {"same": "unchanged", "n/a": "without a value"}
        parts = [
            f"{counts[k]} {words.get(k, k)}"
            for k in ("better", "worse", "changed", "same", "missing", "n/a")
            if k in counts
        ]
        tested = [r for r in self.rows if r.noise_text]
        within = sum(r.noise_text == "within" for r in tested)
        noise = f"; of the {len(tested)} changes with an interval, {within} within noise" if tested else ""
        return f"{', '.join(parts)} of {len(self.rows)} shared metrics{noise}"


def parse_patterns(text: str | None) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in (text if text is not None else DEFAULT_GATED).split(",") if p.strip())
    if not patterns:
        raise AuditError("--metrics: expected comma-separated patterns over PROBE.METRIC, e.g. 'score,attacks.*'")
    return patterns


def diff_results(
    base: Results,
    new: Results,
    *,
    max_drop: float = 0.02,
    metrics: str | None = None,
    labels: tuple[str, str] = ("base", "new"),
    significant: bool = False,
) -> Diff:
    """Every metric the two runs share, with its change and which way that is; `metrics` patterns are gated.

    A pattern the user gave that matches no shared metric is a usage error; the default ones may match none.
    """
    patterns = parse_patterns(metrics)
    if max_drop < 0:
        raise AuditError(f"--max-drop {max_drop:g}: expected 0 or more")
    old_values, new_values = metric_values(base), metric_values(new)
    shared = [k for k in old_values if k in new_values]
    if metrics is not None:
        for pattern in patterns:
            if not any(fnmatchcase(k, pattern) for k in shared):
                hint = did_you_mean(pattern, shared)
                examples = ", ".join(shared[:6]) + (", …" if len(shared) > 6 else "")
                raise AuditError(
                    f"--metrics {pattern!r} matches no metric the two runs share{hint} "
                    f"(patterns over PROBE.METRIC, e.g. 'attacks.*'; shared: {examples})"
                )
    rows = []
    for key in shared:
        probe, metric, old = old_values[key]
        rows.append(
            DiffRow(
                key=key,
                base=old,
                new=new_values[key][2],
                direction=metric_direction(probe, metric),
                gated=any(fnmatchcase(key, p) for p in patterns),
                max_drop=max_drop,
                noise=metric_change(base, new, probe, metric),
                significant=significant,
            )
        )
    rows.sort(key=lambda r: 0 if r.gated else 1 if r.result not in ("same", "n/a") else 2)  # stable: keeps order
    notes = _differences(base, new, labels)
    only_base = [k for k in old_values if k not in new_values]
    only_new = [k for k in new_values if k not in old_values]
    for keys, where in ((only_base, labels[0]), (only_new, labels[1])):
        if keys:
            named = ", ".join(keys[:4]) + (", …" if len(keys) > 4 else "")
            notes.append(f"{len(keys)} metric{'s' if len(keys) != 1 else ''} only in {where}, not compared: {named}")
    return Diff(
        base_label=labels[0],
        new_label=labels[1],
        base_about=_about(base),
        new_about=_about(new),
        rows=rows,
        patterns=patterns,
        max_drop=max_drop,
        notes=notes,
        significant=significant,
    )


def _about(r: Results) -> str:
    d = r.data
    return f"{r.model.get('name', '?')} on {d.get('name', '?')} ({d.get('n', '?')} images)"


def _differences(a: Results, b: Results, labels: tuple[str, ...]) -> list[str]:
    """What makes two runs not like for like: model, weights, task, data set, number of images, seed."""
    notes = []
    ma, mb, da, db = a.model, b.model, a.data, b.data
    if ma.get("name") != mb.get("name"):
        notes.append(f"different models: {ma.get('name')} → {mb.get('name')}")
    elif ma.get("sha256") and mb.get("sha256") and ma["sha256"] != mb["sha256"]:
        notes.append(f"same model name, different weights: sha256 {ma['sha256'][:12]} → {mb['sha256'][:12]}")
    if ma.get("task") != mb.get("task"):
        notes.append(f"different tasks: {ma.get('task')} → {mb.get('task')}")
    if da.get("name") != db.get("name") or da.get("path") != db.get("path"):
        where = [f"{d.get('name')}{' (' + str(d['path']) + ')' if d.get('path') else ''}" for d in (da, db)]
        notes.append(f"different data sets: {where[0]} → {where[1]}")
    if da.get("n") != db.get("n"):
        notes.append(f"different numbers of images: {da.get('n')} → {db.get('n')}")
    if a.run.get("seed") != b.run.get("seed"):
        notes.append(f"different seeds: {a.run.get('seed')} → {b.run.get('seed')}")
    if same_images(a, b):
        notes.append("the same images (data digest): noise is judged image by image (McNemar, paired bootstrap)")
    else:
        notes.append("not the same images: noise is judged from the two runs' 95% intervals (unpaired)")
    return notes


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"


def _signed(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:+.4f}" if abs(v) < 1000 else f"{v:+,.0f}"


def _plain(text: str) -> str:
    """No control characters (terminal escapes) from user-controlled names."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _change(row: DiffRow) -> str:
    return "0" if row.result == "same" else _signed(row.change)


def _noise_md(row: DiffRow) -> str:
    return md_text(row.noise.describe()) if row.noise_text else ""


def render_plain(diff: Diff) -> str:
    """For a terminal: the verdict, what was compared, then aligned columns (gated failures marked FAIL)."""
    lines = [
        _plain(diff.verdict),
        f"base: {_plain(diff.base_label)}  {_plain(diff.base_about)}",
        f"new:  {_plain(diff.new_label)}  {_plain(diff.new_about)}",
    ]
    lines += [f"note: {_plain(n)}" for n in diff.notes]
    lines += [diff.tally, ""]
    table = [("metric", "", "base", "new", "change", "result", "noise", "gate")]
    table += [
        (
            _plain(r.key),
            DIRECTION_MARK[r.direction],
            _num(r.base),
            _num(r.new),
            _change(r),
            r.result,
            r.noise_text,
            r.gate,
        )
        for r in diff.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {2, 3, 4}
    for row in table:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.append(
        "(↑ higher is better, ↓ lower is better; noise: whether the change is within the noise of the images "
        "measured (95%); gate: the metrics --metrics picks)"
    )
    return "\n".join(lines) + "\n"


def render_md(diff: Diff) -> str:
    """GitHub-flavoured Markdown for a CI job summary: verdict, gated and changed rows, the rest folded."""
    lines = [
        f"## auditor diff: {md_text(diff.verdict)}",
        "",
        f"- base: {md_text(diff.base_label)}: {md_text(diff.base_about)}",
        f"- new: {md_text(diff.new_label)}: {md_text(diff.new_about)}",
    ]
    lines += [f"- note: {md_text(n)}" for n in diff.notes]
    lines += ["", f"{diff.tally}; gated: {md_text(', '.join(diff.patterns))}, at most {diff.max_drop:g} worse.", ""]
    shown = [r for r in diff.rows if r.gated or r.result not in ("same", "n/a")]
    folded = [r for r in diff.rows if r not in shown]
    budget = MD_ROWS
    header = [
        "| metric | better | base | new | change | result | noise | gate |",
        "|---|:-:|--:|--:|--:|---|---|---|",
    ]

    def table(rows: list[DiffRow]) -> list[str]:
        nonlocal budget
        out = list(header)
        for r in rows[:budget]:
            gate = "**FAIL**" if r.failed else r.gate
            result = f"**{r.result}**" if r.failed else r.result
            out.append(
                f"| {md_text(r.key)} | {DIRECTION_MARK[r.direction]} | {_num(r.base)} | {_num(r.new)} | "
                f"{_change(r)} | {result} | {_noise_md(r)} | {gate} |"
            )
        if len(rows) > budget:
            out.append(f"\n{len(rows) - budget} more rows left out; `audit diff` without `--format md` lists them all.")
        budget = max(0, budget - len(rows))
        return out

    if shown:
        lines += table(shown)
    else:
        lines.append("No gated metric and nothing changed.")
    if folded:
        lines += ["", f"<details><summary>{len(folded)} unchanged or without a value</summary>", ""]
        lines += table(folded)
        lines += ["", "</details>"]
    lines += ["", "↑ higher is better, ↓ lower is better.", ""]
    return "\n".join(lines)


# ---- audit compare -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    text: str
    value: str  # full precision, for a tooltip and for sorting
    better: bool
    ci: str = ""  # the 95% interval, where the run has one


@dataclass(frozen=True)
class CompareRow:
    name: str
    direction: str  # ↑ ↓ or ''
    direction_text: str
    cells: list[Cell]


@dataclass(frozen=True)
class CompareTable:
    name: str  # the probe; '' for the scores
    rows: list[CompareRow]


@dataclass(frozen=True)
class CompareView:
    title: str
    labels: list[str]
    facts: list[tuple[str, list[str]]]
    scores: CompareTable
    tables: list[CompareTable]
    notes: list[str]
    verdicts: list[tuple[str, str]]  # per run: (verdict, its css class as the report's)
    cautions: list[tuple[str, str]]  # (run label, finding): what each run's own audit says its figures are worth


def run_labels(paths: list[str], runs: list[Results]) -> list[str]:
    """The model's name; where two runs share one, the folder each results.json lies in (then its path)."""
    labels = [str(r.model.get("name", "?")) for r in runs]
    folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths]
    for candidates in ([f.resolve().name or str(f) for f in folders], [str(f) for f in folders]):
        counts = {x: labels.count(x) for x in labels}
        labels = [c if counts[x] > 1 else x for x, c in zip(labels, candidates)]
    counts = {x: labels.count(x) for x in labels}
    return [f"{x} #{i + 1}" if counts[x] > 1 else x for i, x in enumerate(labels)]


def _best(values: list[float | None], direction: int) -> list[bool]:
    """Which cells hold the better value; none where the values tie or only one run has a value."""
    present = [v for v in values if v is not None]
    if direction == 0 or len(present) < 2:
        return [False] * len(values)
    best = max(present) if direction > 0 else min(present)
    if all(_same(v, best) for v in present):
        return [False] * len(values)
    return [v is not None and _same(v, best) for v in values]


def _row(
    name: str,
    probe: str | None,
    metric: str,
    values: list[float | None],
    texts: list[str] | None = None,
    intervals: list[list[float] | None] | None = None,
) -> CompareRow:
    direction = metric_direction(probe, metric)
    texts = texts or [fmt(v) for v in values]
    cis = [interval_text(iv) if iv else "" for iv in intervals or [None] * len(values)]
    cells = [
        Cell(text=t, value="" if v is None else repr(v), better=b, ci=ci)
        for t, v, b, ci in zip(texts, values, _best(values, direction), cis)
    ]
    return CompareRow(
        name=name, direction=DIRECTION_MARK[direction], direction_text=DIRECTION_TEXT[direction], cells=cells
    )


def _intervals(results: list, metric: str) -> list[list[float] | None]:
    return [p.intervals.get(metric) if p is not None and p.status == "ok" else None for p in results]


def build_compare(paths: list[str], runs: list[Results]) -> CompareView:
    labels = run_labels(paths, runs)
    probes = section_order(dict.fromkeys(name for r in runs for name in r.probes))  # the report's order
    score_rows = [_row("overall score", None, "score", [r.score for r in runs])]
    tables = []
    for name in probes:
        results = [r.probes.get(name) for r in runs]
        scores = [p.score if p is not None and p.status == "ok" else None for p in results]
        texts = [("not run" if p is None else fmt(p.score) if p.status == "ok" else p.status) for p in results]
        score_rows.append(_row(name, name, "score", scores, texts, _intervals(results, "score")))
        metrics = list(dict.fromkeys(m for p in results if p is not None for m in p.metrics))
        rows = [
            _row(
                m, name, m, [p.metrics.get(m) if p is not None else None for p in results], None, _intervals(results, m)
            )
            for m in metrics
        ]
        if rows:
            tables.append(CompareTable(name=name, rows=rows))

    def facts_of(r: Results, path: str) -> dict[str, str]:
        m, d, run = r.model, r.data, r.run
        items = {
            "results": path,
            "model": m.get("name"),
            "task": m.get("task"),
            "source": m.get("source"),
            "sha256": (m.get("sha256") or "")[:16],
            "data set": d.get("name"),
            "data path": d.get("path"),
            "images": d.get("n"),
            "labelled": d.get("labelled"),
            "device": run.get("device"),
            "seed": run.get("seed"),
            "version": run.get("version"),
            "finished": run.get("finished"),
        }
        return {k: fact(v) for k, v in items.items()}

    table = [facts_of(r, p) for r, p in zip(runs, paths)]
    keys = [k for k in table[0] if any(t[k] not in ("—", "") for t in table)]
    facts = [(k, [t[k] for t in table]) for k in keys]
    differ = [
        label
        for key, label in (("task", "task"), ("data set", "data set"), ("images", "number of images"))
        if len({t[key] for t in table}) > 1
    ]
    listed = ", ".join(differ[:-1]) + " and " + differ[-1] if len(differ) > 1 else "".join(differ)
    notes = [f"The runs differ in {listed}: the values below are not measured like for like."] if differ else []
    verdicts = [(verdict(r), verdict_css(r)) for r in runs]
    # a model at chance level or with constant predictions scores "better" on every relative figure; its own key
    # findings say so in its report, and must say so here too, before the stars
    cautions = [(label, f.text) for label, r in zip(labels, runs) for f in r.findings if f.key]
    return CompareView(
        title="Audit comparison: " + " vs ".join(labels),
        labels=labels,
        facts=facts,
        scores=CompareTable(name="", rows=score_rows),
        tables=tables,
        notes=notes,
        verdicts=verdicts,
        cautions=cautions,
    )


def write_compare(paths: list[str], runs: list[Results], out: str | Path) -> Path:
    """Render compare.html atomically (no half-written page on error) and return its path."""
    return write_text_atomic(out, environment().get_template("compare.html.j2").render(view=build_compare(paths, runs)))
