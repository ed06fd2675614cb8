"""Gates: pass/fail rules over results, as pure functions; the CLI maps them to exit codes.

A rule is `PROBE.METRIC OP NUMBER` (OP in >=, >, <=, <), e.g. `attacks.score >= 0.5` or
`attacks.robust_accuracy@linf=2/255 >= 0.3`; `score OP NUMBER` reads the run's score.
`warn:` in front makes a rule advisory. `PROBE.METRIC drop <= NUMBER` compares with a
baseline results.json: how much worse the metric got, by its direction (baseline minus
current where higher is better, current minus baseline where lower is).
`PROBE.METRIC significant drop <= NUMBER` fails only when the drop passes NUMBER and is also
beyond noise (auditor/noise.py: a paired test on the same images, else the two intervals). A rules file is
TOML: `rules = [...]` and, optionally, `baseline = "path/results.json"` relative to it.
"""

from __future__ import annotations

import html
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from auditor.config import read_toml
from auditor.errors import AuditError, did_you_mean
from auditor.headlines import key_findings, section_order
from auditor.noise import metric_change
from auditor.probes.base import metric_direction
from auditor.results import GateResult, Results, load

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_PROBE_FAILED = 0, 1, 2, 3
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RULE = re.compile(
    rf"^(?P<warn>warn:)?\s*(?P<target>\S+?)\s*(?P<drop>\s+(?P<significant>significant\s+)?drop\s+)?(?P<op>>=|<=|>|<)\s*(?P<num>{_NUMBER})\s*$"
)


@dataclass(frozen=True)
class Rule:
    text: str
    probe: str | None  # None: the run's overall score
    metric: str
    op: str
    threshold: float
    warn: bool = False
    drop: bool = False  # how much worse than the baseline, by the metric's direction
    significant: bool = False  # a drop rule that fails only on a change beyond noise

    def describe(self) -> str:
        return f"{self.probe}.{self.metric}" if self.probe else self.metric


def parse_rule(text: str) -> Rule:
    m = _RULE.match(text.strip())
    if not m:
        raise AuditError(
            f"gate {text!r}: expected PROBE.METRIC OP NUMBER (OP one of >= > <= <), e.g. 'attacks.score >= 0.5'"
        )
    target = m["target"]
    if target == "score":
        probe, metric = None, "score"
    else:
        probe, dot, metric = target.partition(".")
        if not dot or not probe or not metric:
            raise AuditError(f"gate {text!r}: {target!r} is not PROBE.METRIC (or 'score' for the run's score)")
    return Rule(
        text=text.strip(),
        probe=probe,
        metric=metric,
        op=m["op"],
        threshold=float(m["num"]),
        warn=bool(m["warn"]),
        drop=bool(m["drop"]),
        significant=bool(m["significant"]),
    )


@dataclass(frozen=True)
class Gates:
    """Rules, and the baseline results.json that `drop` rules compare with."""

    rules: list[Rule]
    baseline: Path | None = None
    source: str | None = None  # the gates file that named the baseline; None: the command line did

    def load_baseline(self) -> Results | None:
        """The baseline, or an AuditError naming the file (and the gates file that named it)."""
        if self.baseline is None:
            return None
        try:
            return load(self.baseline)
        except AuditError as exc:
            if self.source is None:
                raise
            raise AuditError(
                f"{self.source}: baseline {exc} (a relative path is read from the gates file's folder)"
            ) from exc


def load_gates_file(path: str | Path) -> Gates:
    """A TOML file with `rules = ["attacks.score >= 0.5", ...]` and, optionally, `baseline = "base/results.json"`."""
    doc = read_toml(path, "gates file")
    rules = doc.get("rules")
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise AuditError(f'{path}: expected a top-level `rules` list of strings, e.g. rules = ["attacks.score >= 0.5"]')
    baseline = doc.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or not baseline.strip()):
        raise AuditError(f'{path}: `baseline` must be the path of a results.json, e.g. baseline = "main/results.json"')
    resolved = Path(path).parent / Path(baseline).expanduser() if baseline else None
    return Gates([parse_rule(r) for r in rules], resolved, str(path) if baseline else None)


def load_rules_file(path: str | Path) -> list[Rule]:
    """The rules of a gates file (see load_gates_file for its baseline too)."""
    return load_gates_file(path).rules


def parse_gates(values: list[str], files: list[str] | None = None, baseline: str | Path | None = None) -> Gates:
    """Rules from --gate values (a rule, or the path of a TOML rules file) and from rules files (--rules).

    The baseline is `baseline` (--baseline) where given, else the one a rules file names.
    """
    rules: list[Rule] = []
    named: dict[Path, Gates] = {}
    sources = [(str(f), True) for f in files or []] + [(str(v), str(v).endswith(".toml")) for v in values]
    for value, is_file in sources:
        if is_file:
            loaded = load_gates_file(value)
            rules += loaded.rules
            if loaded.baseline is not None:
                named.setdefault(loaded.baseline.resolve(), loaded)
        else:
            rules.append(parse_rule(value))
    if baseline is not None:  # the command line wins
        return Gates(rules, Path(baseline))
    if len(named) > 1:
        listed = ", ".join(f"{g.source} ({g.baseline})" for g in named.values())
        raise AuditError(f"gates files name different baselines: {listed}; keep one, or pass --baseline")
    first = next(iter(named.values()), None)
    return Gates(rules, first.baseline, first.source) if first else Gates(rules)


def parse_gate_args(values: list[str]) -> list[Rule]:
    """--gate takes a rule or the path of a TOML rules file."""
    return parse_gates(values).rules


def drop_direction(rule: Rule) -> int:
    """+1 or -1: which way the metric of a drop rule gets worse; a metric with no direction is a usage error."""
    direction = metric_direction(rule.probe, rule.metric)
    if direction == 0:
        raise AuditError(
            f"gate {rule.text!r}: {rule.describe()} is a count or a setting, neither better nor worse, "
            "so it cannot drop; compare it with a plain rule, e.g. "
            f"'{rule.describe()} <= NUMBER'"
        )
    return direction


def check_rules_apply(rules: list[Rule], probes: list[str], baseline: Results | None) -> None:
    """Usage errors found before any work: a rule on a probe that will not run, a drop with no baseline."""
    for rule in rules:
        if rule.probe is not None and rule.probe not in probes:
            raise AuditError(
                f"gate {rule.text!r}: probe {rule.probe!r} is not part of this run"
                f"{did_you_mean(rule.probe, probes)} (running: {', '.join(probes) or 'none'})"
            )
        if rule.drop:
            drop_direction(rule)
            if baseline is None:
                raise AuditError(
                    f"gate {rule.text!r}: a drop rule needs --baseline RESULTS.json "
                    '(or `baseline = "..."` in the gates file)'
                )


def _value(results: Results, rule: Rule) -> tuple[float | None, str]:
    """(value, why it is missing)."""
    if rule.probe is None:
        return results.score, "" if results.score is not None else "the run has no score"
    probe = results.probes.get(rule.probe)
    if probe is None:
        return None, f"probe {rule.probe} did not run"
    if probe.status != "ok":
        why = probe.error or probe.reason or ""
        return None, f"probe {rule.probe} {probe.status}: {why}"
    gone = probe.unmeasured
    if gone and rule.metric in gone["metrics"]:  # null, or label-free rates on constant predictions: never a pass
        return None, f"{rule.probe}.{rule.metric} is not measured: {gone['why']}"
    if rule.metric == "score":
        return probe.score, "" if probe.score is not None else f"probe {rule.probe} has no score"
    if rule.metric not in probe.metrics:
        names = ["score"] + sorted(probe.metrics)
        # augment alone has hundreds of metrics: name a few, the file has them all
        known = (
            ", ".join(names) if len(names) <= 16 else f"{', '.join(names[:12])}, … {len(names)} in all, in results.json"
        )
        hint = did_you_mean(rule.metric, ["score", *probe.metrics])
        raise AuditError(f"gate {rule.text!r}: {rule.probe} has no metric {rule.metric!r}{hint} (it has: {known})")
    value = probe.metrics[rule.metric]
    return value, "" if value is not None else "the metric is null"


def evaluate(rules: list[Rule], results: Results, baseline: Results | None = None) -> list[GateResult]:
    out = []
    for rule in rules:
        value, why = _value(results, rule)
        direction = drop_direction(rule) if rule.drop else 1
        if rule.drop and baseline is None:
            raise AuditError(f"gate {rule.text!r}: a drop rule needs a baseline results.json")
        if rule.drop and value is not None:
            base, base_why = _value(baseline, rule)
            if base is None:
                value, why = None, f"baseline: {base_why}"
            else:  # rounded so that 0.45 - 0.43 is not 0.0200000000001
                value = round((base - value) * direction, 12) + 0.0  # + 0.0: no -0
        passed = value is not None and OPS[rule.op](value, rule.threshold)
        what = " drop" + (" (lower is better)" if direction < 0 else "") if rule.drop else ""
        message = why if value is None else f"{rule.describe()}{what} = {value:.4g}"
        if rule.significant and value is not None:
            passed, note = _significance(rule, baseline, results, passed)
            message += note
        out.append(GateResult(rule=rule.text, value=value, passed=passed, warn=rule.warn, message=message))
    return out


def _significance(rule: Rule, baseline: Results, results: Results, passed: bool) -> tuple[bool, str]:
    """A significant-drop rule: a drop past the threshold fails only when the change is beyond noise (or when
    there is nothing to tell noise by: then it is judged as a plain drop, and says so)."""
    change = metric_change(baseline, results, rule.probe, rule.metric)
    if change is None or change.beyond_noise is None:
        return passed, "; no interval to tell noise from change: judged as a plain drop"
    if passed:
        return True, f"; {change.describe()}"
    if not change.beyond_noise:
        return True, f", past {rule.threshold:g} but {change.describe()}: passes"
    return False, f"; {change.describe()}"


def suspect(results: Results) -> str | None:
    """The first probe whose own checks say its figures are not measured, with why ("attacks: ..."), or None."""
    return next((f"{name}: {p.suspect}" for name, p in results.probes.items() if p.suspect), None)


def unmeasured(results: Results) -> str | None:
    """The first probe whose figures measure nothing (auditor/degenerate.py), with why, or None."""
    return next((f"{name}: {p.unmeasured['why']}" for name, p in results.probes.items() if p.unmeasured), None)


def exit_code(results: Results) -> int:
    """1 when a (non-warn) gate failed, a probe's figures are suspect (SUSPECT: a gate could not trust them) or
    measure nothing (UNMEASURED: no gate can pass on them); else 3 when a probe failed; else 0."""
    if any(not g.passed and not g.warn for g in results.gates) or suspect(results) or unmeasured(results):
        return EXIT_GATE_FAILED
    if any(p.status == "failed" for p in results.probes.values()):
        return EXIT_PROBE_FAILED
    return EXIT_OK


def verdict(results: Results) -> str:
    if results.run.get("partial"):
        return "INTERRUPTED: partial results"
    if not any(not g.passed and not g.warn for g in results.gates):
        # nothing measured comes first: an image-blind model also fails the attacks' masking checks, but that is
        # what follows from it, not why
        if unmeasured(results):
            return f"UNMEASURED: {unmeasured(results)}"
        if suspect(results):
            return f"SUSPECT: {suspect(results)}"
    return {
        EXIT_OK: "PASSED",
        EXIT_GATE_FAILED: "FAILED: a gate failed",
        EXIT_PROBE_FAILED: "INCOMPLETE: a probe failed",
    }[exit_code(results)]


def junit_xml(results: Results) -> str:
    """One test case per rule (plus one per failed probe when no rule covers it), for CI test views."""
    suite = ET.Element("testsuite", name="auditor.gates", tests="0", failures="0", skipped="0")
    failures = skipped = 0
    for g in results.gates:
        case = ET.SubElement(suite, "testcase", classname="auditor.gates", name=g.rule)
        if not g.passed:
            tag = "skipped" if g.warn else "failure"
            ET.SubElement(case, tag, message=g.message or "gate failed").text = g.message
            skipped += g.warn
            failures += not g.warn
    for name, p in results.probes.items():
        if p.status == "failed":
            case = ET.SubElement(suite, "testcase", classname="auditor.probes", name=name)
            ET.SubElement(case, "error", message=p.error or "probe failed").text = p.error
            failures += 1
        elif p.suspect:
            case = ET.SubElement(suite, "testcase", classname="auditor.probes", name=f"{name}: figures measured")
            ET.SubElement(case, "failure", message=f"SUSPECT: {p.suspect}").text = p.suspect
            failures += 1
        elif p.unmeasured:
            why = p.unmeasured["why"]
            case = ET.SubElement(suite, "testcase", classname="auditor.probes", name=f"{name}: figures measured")
            ET.SubElement(case, "failure", message=f"UNMEASURED: {why}").text = why
            failures += 1
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def summary_md(results: Results, report_name: str = "report.html") -> str:
    """A short Markdown summary for a CI job page: verdict, scores, gates (well under 1 MiB)."""

    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    lines = [
        f"## auditor: {verdict(results)}",
        "",
        f"Model **{md_text(results.model['name'])}** ({results.model['task']}, {results.model['source']}) on "
        f"**{md_text(results.data['name'])}** ({results.data['n']} images"
        f"{'' if results.data['labelled'] else ', label-free'}); overall score **{fmt(results.score)}**.",
        "",
        "| probe | status | score |",
        "|---|---|---|",
    ]
    for name in section_order(results.probes):
        p = results.probes[name]
        lines.append(f"| {name} | {p.status} | {fmt(p.score)} |")
    if results.gates:
        lines += ["", "| gate | value | result |", "|---|---|---|"]
        for g in results.gates:
            result = "pass" if g.passed else ("warn" if g.warn else "**FAIL**")
            lines.append(f"| `{g.rule}` | {fmt(g.value)} | {result} |")
    failed = [(n, p.error) for n, p in results.probes.items() if p.status == "failed"]
    if failed:
        lines += [""] + [f"- probe **{n}** failed: {md_text(e or '')}" for n, e in failed]
    keys = key_findings(results, section_order(results.probes), failures=False)  # failures are listed above
    if keys:
        lines += ["", "Key findings:", ""] + [
            f"{i}. **{k.severity}** · {k.probe}: {md_text(k.text)}" for i, k in enumerate(keys, 1)
        ]
    lines += ["", f"Full report: `{report_name}`", ""]
    return "\n".join(lines)


def md_text(text: str) -> str:
    """User-controlled text as literal Markdown: HTML escaped (CI viewers render tags), Markdown marks backslashed."""
    text = html.escape(str(text).replace("\n", " ")[:300], quote=False)
    return re.sub(r"([\\`*_\[\]|#{}])", r"\\\1", text)
