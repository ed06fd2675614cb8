"""What a reader must see first, whatever the medium (report, summary.md): the order of the
probes and the few findings that matter most."""

from __future__ import annotations

from dataclasses import dataclass

from auditor.probes.base import report_order
from auditor.results import Results

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}
KEY_FINDINGS = 5


@dataclass(frozen=True)
class KeyFinding:
    probe: str
    severity: str
    text: str


def section_order(names) -> list[str]:
    """The order of the probes' sections: each probe declares its place (`Probe.report_order`; the built-ins
    put robustness first, then explanations, informational last); probes not installed, or that declare no
    place, follow in the order they ran."""
    return report_order(names)


def key_findings(
    results: Results, order: list[str], limit: int = KEY_FINDINGS, failures: bool = True
) -> list[KeyFinding]:
    """The few findings a reviewer must read: failures, then each probe's headline, then more headlines.

    Failed probes lead unless `failures` is off (a medium that lists them already). Then one per
    probe (its `key` findings before others, by severity), so that three corruption
    findings cannot crowd out the attack; then the other headlines, then other high and medium findings.
    The run's own key findings (auditor/degenerate.py) come first of all, as probe "run".
    """
    rank = {n: i for i, n in enumerate(order)}
    failed = [
        KeyFinding(n, "high", f"the {n} probe failed: {p.error}")
        for n, p in results.probes.items()
        if p.status == "failed" and failures
    ]
    # the run's own findings (auditor/degenerate.py) lead: they say what every probe's figures are worth
    own = [KeyFinding("run", f.severity, f.text) for f in results.findings if f.key]
    failed = own + failed
    firsts, rest = [], []
    for name, p in results.probes.items():
        if p.status != "ok":
            continue
        ranked = sorted(
            (f for f in p.findings if f.key or f.severity in ("high", "medium")),
            key=lambda f: (not f.key, SEVERITY_ORDER[f.severity]),
        )
        firsts += [(name, f) for f in ranked[:1]]
        rest += [(name, f) for f in ranked[1:]]

    def by_weight(pair):
        name, f = pair
        return not f.key, SEVERITY_ORDER[f.severity], rank.get(name, len(rank))

    candidates = failed + [KeyFinding(n, f.severity, f.text) for n, f in sorted(firsts, key=by_weight)]
    candidates += [KeyFinding(n, f.severity, f.text) for n, f in sorted(rest, key=by_weight)]
    chosen: list[KeyFinding] = []
    for k in candidates:  # once each: probes with nothing to measure all repeat the run's "nothing to measure: why"
        if not any(k.text.startswith(c.text) for c in chosen):
            chosen.append(k)
    return chosen[:limit]
