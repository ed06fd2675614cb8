"""Gates: rule parsing, evaluation, exit codes, JUnit XML and the Markdown summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from auditor.errors import AuditError
from auditor.gates import evaluate, exit_code, junit_xml, parse_rule, summary_md
from auditor.results import Finding, ProbeResult, Results
from tests.conftest import FAST


def make_results(score=0.4, status="ok") -> Results:
    attacks = ProbeResult(
        status=status,
        score=score if status == "ok" else None,
        metrics={"clean_accuracy": 0.98, "robust_accuracy@linf=2/255": 0.31} if status == "ok" else {},
        findings=(Finding("high", "x"),),
        error="boom" if status == "failed" else None,
    )
    return Results(
        model={"name": "m", "task": "classify", "source": "zoo"},
        data={"name": "d", "n": 3, "labelled": True},
        run={"device": "cpu", "seed": 0, "seconds": 1.0, "version": "0"},
        probes={"attacks": attacks, "filters": ProbeResult(status="ok")},
    )


@pytest.mark.parametrize(
    "text, probe, metric, op, number, warn, drop",
    [
        ("attacks.score >= 0.5", "attacks", "score", ">=", 0.5, False, False),
        ("attacks.robust_accuracy@linf=2/255>=0.3", "attacks", "robust_accuracy@linf=2/255", ">=", 0.3, False, False),
        ("warn: augment.score < 1e-1", "augment", "score", "<", 0.1, True, False),
        ("attacks.score drop <= 0.02", "attacks", "score", "<=", 0.02, False, True),
        ("score > .25", None, "score", ">", 0.25, False, False),
    ],
)
def test_parse_rule(text, probe, metric, op, number, warn, drop):
    rule = parse_rule(text)
    assert (rule.probe, rule.metric, rule.op, rule.threshold, rule.warn, rule.drop) == (
        probe,
        metric,
        op,
        number,
        warn,
        drop,
    )


@pytest.mark.parametrize(
    "text", ["attacks.score", "attacks.score == 1", "attacks.score >= high", ">= 0.3", "attacks >= 1"]
)
def test_bad_rules(text):
    with pytest.raises(AuditError):
        parse_rule(text)


def test_evaluate_pass_fail_warn_and_exit_codes():
    res = make_results()
    gates = evaluate(
        [
            parse_rule("attacks.score >= 0.3"),
            parse_rule("attacks.robust_accuracy@linf=2/255 >= 0.5"),
            parse_rule("warn: score >= 0.9"),
        ],
        res,
    )
    assert [g.passed for g in gates] == [True, False, False]
    assert exit_code(res.with_gates(gates)) == 1
    assert exit_code(res.with_gates(gates[:1] + gates[2:])) == 0  # a failed warn rule does not fail the build


def test_failed_probe_fails_its_gate_and_exits_3_without_gates():
    res = make_results(status="failed")
    assert exit_code(res) == 3
    gates = evaluate([parse_rule("attacks.score >= 0.1")], res)
    assert gates[0].passed is False and "failed" in gates[0].message
    assert exit_code(res.with_gates(gates)) == 1


def test_unknown_metric_is_a_usage_error():
    with pytest.raises(AuditError, match="robust_accuracy@linf=2/255"):
        evaluate([parse_rule("attacks.robust_acc >= 0.1")], make_results())


def test_drop_rule_against_baseline():
    gates = evaluate([parse_rule("attacks.score drop <= 0.02")], make_results(score=0.40), make_results(score=0.45))
    assert gates[0].value == pytest.approx(0.05) and gates[0].passed is False


def test_junit_has_one_case_per_rule_and_summary_reads():
    res = make_results()
    res = res.with_gates(evaluate([parse_rule("attacks.score >= 0.3"), parse_rule("attacks.score >= 0.9")], res))
    suite = ET.fromstring(junit_xml(res).split("?>", 1)[1])
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["attacks.score >= 0.3", "attacks.score >= 0.9"]
    assert suite.get("failures") == "1" and cases[1].find("failure") is not None
    md = summary_md(res)
    assert "FAILED" in md and "`attacks.score >= 0.9`" in md and "**FAIL**" in md
    assert len(md.encode()) < 1 << 20


def test_run_with_gates_exit_codes(audit, tmp_path):
    out = tmp_path / "out"
    run = ("run", "--limit", "12", "--probes", "attacks", "--out", out)  # the probe the rules read
    r = audit(*run, "--gate", "attacks.clean_accuracy >= 0.5", *FAST)
    assert r.code == 0, r
    r = audit(*run, "--gate", "attacks.score >= 0.99", *FAST)
    assert r.code == 1, r
    assert "gate FAIL: attacks.score >= 0.99" in r.out
    case = ET.parse(out / "junit.xml").getroot().find("testcase")
    assert case.get("name") == "attacks.score >= 0.99" and case.find("failure") is not None
    r = audit("run", "--limit", "12", "--out", out, "--gate", "attacks.score => 0.5")
    assert r.code == 2 and "PROBE.METRIC OP NUMBER" in r.err
    r = audit("run", "--limit", "12", "--out", out, "--probes", "filters", "--gate", "attacks.score >= 0.5")
    assert r.code == 2 and "not part of this run" in r.err


def test_gate_command_on_saved_results(audit, tmp_path):
    out = tmp_path / "out"
    assert audit("run", "--limit", "12", "--probes", "attacks", "--out", out, *FAST).code == 0  # what the rules read
    passing = tmp_path / "pass.toml"
    passing.write_text('rules = ["attacks.clean_accuracy >= 0.5", "warn: attacks.score >= 0.99"]\n')
    r = audit("gate", out / "results.json", "--rules", passing)
    assert r.code == 0, r
    suite = ET.parse(out / "junit.xml").getroot()
    assert len(suite.findall("testcase")) == 2 and suite.get("skipped") == "1"
    failing = tmp_path / "fail.toml"
    failing.write_text('rules = ["attacks.robust_accuracy@linf=0.3 > 0.99"]\n')
    assert audit("gate", out / "results.json", "--rules", failing).code == 1
    assert "FAILED" in (out / "summary.md").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text('rules = "attacks.score >= 1"\n')
    assert audit("gate", out / "results.json", "--rules", bad).code == 2
    assert audit("gate", tmp_path / "missing.json", "--gate", "attacks.score >= 0").code == 2
    assert audit("gate", out / "results.json", "--gate", "attacks.nope >= 0").code == 2


def test_misspelt_metric_names_the_closest_and_stays_one_short_line():
    metrics = {f"accuracy@fog:{s}": 0.5 for s in range(1, 6)} | {f"relative@{n}": 0.5 for n in ("fog", "snow", "frost")}
    metrics |= {f"flip_rate@shift{i}:1": 0.1 for i in range(40)}
    results = Results(
        model={"name": "m"}, data={}, run={}, probes={"augment": ProbeResult(status="ok", score=0.5, metrics=metrics)}
    )
    with pytest.raises(AuditError) as err:
        evaluate([parse_rule("augment.relative@fgo >= 0.5")], results)
    message = str(err.value)
    assert "did you mean relative@fog?" in message and "in all, in results.json" in message and len(message) < 600
