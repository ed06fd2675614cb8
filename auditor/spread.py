"""The spread of each metric over repeated runs (`audit run --repeat N`, `audit spread`): how much a figure moves
with the seed alone, beside the 95% interval the runs give it, so that a gate is set above the noise."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from fnmatch import fnmatchcase

from auditor.compare import metric_values, parse_patterns
from auditor.errors import AuditError
from auditor.gates import md_text
from auditor.results import Results


@dataclass(frozen=True)
class SpreadRow:
    key: str
    values: list[float]  # one per run that has it
    width: float | None  # the mean width of the runs' 95% intervals, where they have one

    @property
    def spread(self) -> float:
        return max(self.values) - min(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def spread_rows(runs: list[Results], metrics: str | None = None) -> list[SpreadRow]:
    """A row per metric that every run has a value for and the patterns match (default: the scores)."""
    if len(runs) < 2:
        raise AuditError("a spread needs at least 2 runs")
    patterns = parse_patterns(metrics)
    values = [metric_values(r) for r in runs]
    rows = []
    for key, (probe, metric, _) in values[0].items():
        if not any(fnmatchcase(key, p) for p in patterns):
            continue
        got = [v[key][2] for v in values if key in v and v[key][2] is not None]
        if len(got) < len(runs):
            continue
        widths = [_width(r, probe, metric) for r in runs]
        widths = [w for w in widths if w is not None]
        rows.append(SpreadRow(key, got, sum(widths) / len(widths) if widths else None))
    if not rows and metrics is None:  # no probe with a score ran: every metric
        return spread_rows(runs, "*")
    if not rows:
        raise AuditError(f"no metric matching {', '.join(patterns)} has a value in every run")
    return rows


def _width(results: Results, probe: str | None, metric: str) -> float | None:
    p = results.probes.get(probe) if probe else None
    iv = p.intervals.get(metric) if p is not None else None
    return None if iv is None else iv[1] - iv[0]


COLUMNS = ("metric", "mean", "min", "max", "spread", "sd", "95% interval width")
EXPLAIN = (
    "spread: max - min over the runs (seeds); a `drop <= X` gate with X under the spread can fail on the seed "
    "alone. 95% interval width: what the images measured allow (the mean over the runs); `significant drop` "
    "rules and `audit diff --significant` judge a change against it."
)


def _cells(row: SpreadRow) -> tuple[str, ...]:
    width = "—" if row.width is None else f"{row.width:.4f}"
    mean = sum(row.values) / len(row.values)
    return (row.key, f"{mean:.4f}", f"{min(row.values):.4f}", f"{max(row.values):.4f}", f"{row.spread:.4f}",
            f"{row.sd:.4f}", width)  # fmt: skip


def render_spread(rows: list[SpreadRow], runs: list[Results], style: str = "plain") -> str:
    seeds = ", ".join(str(r.run.get("seed")) for r in runs)
    about = f"{runs[0].model.get('name')} on {runs[0].data.get('name')}: {len(runs)} runs (seeds {seeds})"
    table = [COLUMNS, *(_cells(r) for r in rows)]
    if style == "md":
        lines = [f"## auditor spread: {md_text(about)}", "", "| " + " | ".join(COLUMNS) + " |"]
        lines.append("|---|" + "--:|" * (len(COLUMNS) - 1))
        lines += ["| " + " | ".join([md_text(c[0]), *c[1:]]) + " |" for c in table[1:]]
        return "\n".join([*lines, "", md_text(EXPLAIN), ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [about, ""]
    for row in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join([*lines, "", EXPLAIN, ""])
