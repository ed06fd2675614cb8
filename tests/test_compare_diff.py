"""`audit diff`, `audit compare`, metric directions, and gates against a baseline a gates file names.

Synthetic results.json files only (no audit runs), so these are fast.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from auditor.errors import AuditError
from auditor.gates import evaluate, exit_code, load_gates_file, parse_rule
from auditor.probes.base import metric_direction
from auditor.results import Finding, ProbeResult, Results, load, save

HOSTILE = "<script>alert(1)</script>|x"


def write(
    folder: Path,
    model: str = "net",
    attacks: float | None = 0.5,
    robust: float = 0.3,
    masking: float = 0.0,
    augment: float = 0.8,
    n: int = 100,
    augment_metrics: int = 4,
    dead: float = 0.0,
) -> Path:
    """A results.json under `folder` with attacks (failed where `attacks` is None), augment and filters."""
    flips = {f"flip_rate@shift{i}:1": 0.1 for i in range(augment_metrics)}
    probes = {
        "attacks": ProbeResult(
            status="ok",
            score=attacks,
            metrics={"clean_accuracy": 0.95, "robust_accuracy@linf=0.1": robust, "suspect_masking": masking},
        )
        if attacks is not None
        else ProbeResult(status="failed", error="boom"),
        "augment": ProbeResult(status="ok", score=augment, metrics={"clean_accuracy": 0.95, **flips}),
        "filters": ProbeResult(status="ok", metrics={"filters": 32.0, "dead_filters": dead}),
    }
    results = Results(
        model={"name": model, "task": "classify", "source": "zoo", "sha256": "ab" * 32},
        data={"name": "digits", "n": n, "labelled": True},
        run={"device": "cpu", "seed": 0, "seconds": 1.0, "version": "0"},
        probes=probes,
    )
    path = folder / "results.json"
    save(results, path)
    return path


# ---- directions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe, metric, direction",
    [
        ("attacks", "robust_accuracy@linf=0.1", 1),
        ("attacks", "suspect_masking", -1),
        ("attacks", "median_min_eps", 1),
        ("attacks", "disappearance_rate@linf=0.1", -1),
        ("augment", "flip_rate@fog:3", -1),
        ("augment", "mce", -1),
        ("augment", "relative@fog", 1),
        ("patch", "success_rate@scale=0.1", -1),
        ("patch", "min_scale_for_half", 1),
        ("patch", "recall_drop@scale=0.1", -1),
        ("gradcam", "deletion_auc@gradcam++", -1),
        ("gradcam", "deletion_auc@random", 0),
        ("gradcam", "insertion_auc", 1),
        ("gradcam", "road_morf_auc", -1),
        ("gradcam", "road_lerf_auc", 1),
        ("gradcam", "road_morf_auc@random", 0),
        ("gradcam", "road_lerf_auc@edges", 0),
        ("gradcam", "shortcut_classes", -1),
        ("filters", "filters", 0),
        ("filters", "dead_filters", -1),
        ("actmax", "dead_channels", -1),
        ("actmax", "class_hit_rate", 1),
        ("filters", "score", 1),
        (None, "score", 1),
        ("not-installed", "anything", 1),
    ],
)
def test_metric_direction(probe, metric, direction):
    assert metric_direction(probe, metric) == direction


# ---- audit diff ----------------------------------------------------------------------------------------


def test_diff_identical_runs_pass(audit, tmp_path):
    base, new = write(tmp_path / "a"), write(tmp_path / "b")
    r = audit("diff", base, new)
    assert r.code == 0, r
    assert r.out.startswith("PASSED") and "FAIL" not in r.out
    assert audit("diff", tmp_path / "a", tmp_path / "b").code == 0  # output folders work too


def test_diff_gated_drop_past_max_fails_and_within_passes(audit, tmp_path):
    base, new = write(tmp_path / "a", attacks=0.50), write(tmp_path / "b", attacks=0.45)
    r = audit("diff", base, new)
    assert r.code == 1, r
    assert r.out.startswith("FAILED") and re.search(r"^attacks\.score .*-0\.0500\s+worse\s+FAIL$", r.out, re.M), r.out
    assert audit("diff", base, new, "--max-drop", "0.06").code == 0
    exact = write(tmp_path / "c", attacks=0.48)  # 0.50 - 0.48 in floats is 0.020000000000000018
    assert audit("diff", base, exact, "--max-drop", "0.02").code == 0
    assert audit("diff", new, base).code == 0  # a rise is no drop


def test_ungated_drop_does_not_fail_but_is_shown_worse(audit, tmp_path):
    base, new = write(tmp_path / "a", robust=0.3), write(tmp_path / "b", robust=0.0)
    r = audit("diff", base, new)
    assert r.code == 0, r
    assert re.search(r"^attacks\.robust_accuracy@linf=0\.1 .*worse\s*$", r.out, re.M), r.out
    assert audit("diff", base, new, "--metrics", "attacks.*").code == 1


def test_lower_is_better_rise_counts_as_drop(audit, tmp_path):
    clean, masked = write(tmp_path / "a", masking=0.0), write(tmp_path / "b", masking=1.0)
    r = audit("diff", clean, masked, "--metrics", "attacks.suspect_masking")
    assert r.code == 1, r
    assert "attacks.suspect_masking +1.0000" in r.out.splitlines()[0]
    assert audit("diff", masked, clean, "--metrics", "attacks.suspect_masking").code == 0
    assert audit("diff", clean, masked).code == 0  # not gated by default


def test_a_gated_score_lost_to_a_failed_probe_fails(audit, tmp_path):
    base, crashed = write(tmp_path / "a"), write(tmp_path / "b", attacks=None)
    r = audit("diff", base, crashed)
    assert r.code == 1 and "attacks.score missing" in r.out.splitlines()[0], r
    assert audit("diff", crashed, base, "--metrics", "attacks.score").code == 0  # nothing to lose


def test_metrics_patterns_and_usage_errors(audit, tmp_path):
    base, new = write(tmp_path / "a", augment=0.8), write(tmp_path / "b", augment=0.7)
    assert audit("diff", base, new, "--metrics", "attacks.*").code == 0
    assert audit("diff", base, new, "--metrics", "attacks.*, augment.sc*").code == 1
    r = audit("diff", base, new, "--metrics", "attacks.*,atacks.score")
    assert r.code == 2 and "'atacks.score' matches no metric" in r.err and "did you mean attacks.score?" in r.err, r
    assert len(r.err.strip().splitlines()) == 1
    r = audit("diff", base, tmp_path / "missing.json")
    assert r.code == 2 and "missing.json" in r.err, r


def test_diff_says_when_runs_differ(audit, tmp_path):
    r = audit("diff", write(tmp_path / "a", model="one", n=100), write(tmp_path / "b", model="two", n=50))
    assert "different models: one → two" in r.out and "different numbers of images: 100 → 50" in r.out, r


def test_markdown_diff(audit, tmp_path):
    base = write(tmp_path / "a", augment_metrics=200)
    new = write(tmp_path / "b", model=HOSTILE, attacks=0.3, augment_metrics=200)
    out = tmp_path / "diff.md"
    r = audit("diff", base, new, "--format", "md", "--out", out)
    assert r.code == 1, r
    md = out.read_text(encoding="utf-8")
    assert md.startswith("## auditor diff: FAILED")
    assert "| metric | better | base | new | change | result | noise | gate |" in md
    assert re.search(
        r"^\| attacks\.score \| ↑ \| 0\.5000 \| 0\.3000 \| -0\.2000 \| \*\*worse\*\* \|  \| \*\*FAIL\*\* \|$", md, re.M
    ), md  # no intervals in these runs: no noise verdict
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\|x" in md and "<script>" not in md
    head, _, folded = md.partition("<details>")
    assert "attacks.score" in head and "flip\\_rate@shift199:1" in folded  # unchanged rows folded
    assert len(md.encode()) < 1 << 20


# ---- audit compare -------------------------------------------------------------------------------------


def _row(html: str, name: str) -> str:
    match = re.search(rf"<tr><td>{re.escape(name)}</td>.*?</tr>", html, re.S)
    assert match, name
    return match.group(0)


def _marked(row: str) -> list[bool]:
    return ["better" in cell for cell in re.findall(r'<td class="num[^"]*"', row)]


def test_compare_html(audit, tmp_path):
    a = write(tmp_path / "run-a", attacks=0.6, masking=1.0)
    b = write(tmp_path / "run-b", attacks=0.4, masking=0.0)
    c = write(tmp_path / "run-c", model=HOSTILE, attacks=0.5, masking=0.0)
    out = tmp_path / "cmp" / "compare.html"
    r = audit("compare", a, b, c, "--out", out)
    assert r.code == 0, r
    html = out.read_text(encoding="utf-8")
    assert '<th class="num">run-a</th>' in html and '<th class="num">run-b</th>' in html  # same model: folders
    assert "&lt;script&gt;alert(1)&lt;/script&gt;|x" in html and "<script>alert" not in html
    assert html.index("overall score") < html.index('id="probe-attacks"')  # scores first
    assert _marked(_row(html, "attacks")) == [True, False, False]  # higher score is better
    assert _marked(_row(html, "suspect_masking")) == [False, True, True]  # lower is better
    assert _marked(_row(html, "augment")) == [False, False, False]  # a tie marks nothing
    assert _marked(_row(html, "filters")) == [False, False, False]  # no direction
    assert html.count('<table class="sortable">') == 4 and "<thead>" in html and "<tbody>" in html
    assert "http://" not in html and "https://" not in html and "src=" not in html  # self-contained


def test_compare_shows_each_runs_verdict_and_its_own_key_findings_before_the_stars(audit, tmp_path):
    """A model at chance level "wins" every relative figure: the page must say what its own audit said of it."""
    good = write(tmp_path / "tuned", attacks=0.1, augment=0.9)
    lucky = write(tmp_path / "scratch", attacks=0.0, augment=1.0)
    chance = "accuracy at chance level: clean accuracy 37.5% is not above chance <b>"
    results = load(lucky)
    attacks = replace(results.probes["attacks"], suspect="its gradients vanish")
    findings = (Finding("high", chance, key=True), Finding("info", "a minor remark"))
    save(replace(results, findings=findings, probes={**results.probes, "attacks": attacks}), lucky)
    out = tmp_path / "compare.html"
    r = audit("compare", good, lucky, "--out", out)
    assert r.code == 0, r
    html = out.read_text(encoding="utf-8")
    cautions = html[html.index('id="cautions"') : html.index('id="scores"')]
    assert "scratch</b>: accuracy at chance level" in cautions and "&lt;b&gt;" in cautions  # escaped
    assert "a minor remark" not in html  # key findings only
    verdicts = re.findall(r'<span class="verdict (\w+)">([^<]*)</span>', html)
    assert verdicts == [("good", "PASSED"), ("bad", "SUSPECT: attacks: its gradients vanish")]
    assert html.index('id="cautions"') < html.index("overall score")
    assert audit("compare", good, write(tmp_path / "other", attacks=0.2), "--out", out).code == 0
    assert 'id="cautions"' not in out.read_text(encoding="utf-8")


def test_compare_needs_two(audit, tmp_path):
    r = audit("compare", write(tmp_path / "a"), "--out", tmp_path / "c.html")
    assert r.code == 2 and "two or more" in r.err, r
    assert not (tmp_path / "c.html").exists()


# ---- gates: baseline from the gates file, direction of drop rules, JUnit ------------------------------


def test_gates_file_baseline_relative_to_the_file(audit, tmp_path, monkeypatch):
    write(tmp_path / "base", attacks=0.50)
    ok, bad = write(tmp_path / "ok", attacks=0.49), write(tmp_path / "bad", attacks=0.40)
    gates = tmp_path / "ci" / "gates.toml"
    gates.parent.mkdir()
    gates.write_text('baseline = "../base/results.json"\nrules = ["attacks.score drop <= 0.02"]\n')
    monkeypatch.chdir(tmp_path / "ok")  # the path is read from the gates file's folder, not the working one
    r = audit("gate", ok, "--rules", gates, "--out", tmp_path / "o1")
    assert r.code == 0, r
    r = audit("gate", bad, "--rules", gates, "--out", tmp_path / "o2")
    assert r.code == 1 and "FAIL: attacks.score drop <= 0.02" in r.out, r
    assert audit("gate", bad, "--gate", gates, "--out", tmp_path / "o3").code == 1
    assert audit("gate", bad, "--rules", gates, "--baseline", bad, "--out", tmp_path / "o4").code == 0  # CLI wins

    spec = load_gates_file(gates)
    assert spec.baseline is not None and load(spec.baseline).probes["attacks"].score == 0.50
    assert [g.passed for g in evaluate(spec.rules, load(ok), load(spec.baseline))] == [True]
    assert [g.passed for g in evaluate(spec.rules, load(bad), load(spec.baseline))] == [False]


def test_gates_file_with_a_missing_or_invalid_baseline_is_a_usage_error(audit, tmp_path):
    new = write(tmp_path / "new")
    gates = tmp_path / "gates.toml"
    gates.write_text('baseline = "nowhere/results.json"\nrules = ["attacks.score >= 0"]\n')
    r = audit("gate", new, "--rules", gates)
    assert r.code == 2 and "nowhere/results.json" in r.err and len(r.err.strip().splitlines()) == 1, r
    assert str(gates) in r.err  # and the gates file that named it
    assert audit("gate", new, "--rules", gates, "--baseline", new).code == 0  # the command line wins
    (tmp_path / "broken.json").write_text("{not json")
    gates.write_text('baseline = "broken.json"\nrules = ["attacks.score >= 0"]\n')
    r = audit("gate", new, "--rules", gates)
    assert r.code == 2 and "broken.json" in r.err, r
    gates.write_text('baseline = 3\nrules = ["attacks.score >= 0"]\n')
    assert audit("gate", new, "--rules", gates).code == 2


def test_drop_rule_on_a_lower_is_better_metric(tmp_path):
    clean, masked = load(write(tmp_path / "a", masking=0.0)), load(write(tmp_path / "b", masking=1.0))
    rule = parse_rule("attacks.suspect_masking drop <= 0")
    got = evaluate([rule], masked, clean)[0]
    assert got.passed is False and got.value == 1.0  # rose from 0 to 1: worse by 1
    got = evaluate([rule], clean, masked)[0]
    assert got.passed is True and got.value == -1.0
    with pytest.raises(AuditError, match="neither better nor worse"):
        evaluate([parse_rule("filters.filters drop <= 0")], clean, masked)


def test_junit_from_a_failing_gate_reads_in_a_junit_parser(audit, tmp_path):
    from junitparser import Failure, JUnitXml, Skipped

    new = write(tmp_path / "new", attacks=0.4)
    r = audit(
        "gate",
        new,
        "--gate",
        "attacks.score >= 0.9",
        "--gate",
        "warn: augment.score >= 0.9",
        "--gate",
        "attacks.clean_accuracy >= 0.5",
    )
    assert r.code == 1, r
    xml = JUnitXml.fromfile(str(tmp_path / "new" / "junit.xml"))  # a root <testsuite> comes wrapped
    (suite,) = list(xml)
    assert (suite.tests, suite.failures, suite.skipped, suite.errors) == (3, 1, 1, 0)
    cases = list(suite)
    assert len(cases) == 3
    kinds = [type(res) for case in cases for res in case.result]
    assert kinds.count(Failure) == 1 and kinds.count(Skipped) == 1
    assert [case.name for case in cases if not case.result] == ["attacks.clean_accuracy >= 0.5"]
    assert exit_code(load(new).with_gates(evaluate([parse_rule("attacks.score >= 0.9")], load(new)))) == 1


def test_run_reads_the_baseline_a_gates_file_names(audit, tmp_path):
    write(tmp_path / "base", dead=0.0)  # digits-cnn has no dead first-layer filters
    fewer = write(tmp_path / "fewer", dead=-1.0)  # a baseline it cannot match
    gates = tmp_path / "gates.toml"
    gates.write_text('baseline = "base/results.json"\nrules = ["filters.dead_filters drop <= 0"]\n')
    run = ("run", "--probes", "filters", "--limit", "12", "--gate", gates)
    r = audit(*run, "--out", tmp_path / "o1")
    assert r.code == 0 and "filters.dead_filters drop (lower is better) = 0" in r.out, r
    r = audit(*run, "--out", tmp_path / "o2", "--baseline", fewer)  # the command line wins
    assert r.code == 1 and "gate FAIL: filters.dead_filters drop <= 0" in r.out, r
    gates.write_text('baseline = "gone/results.json"\nrules = ["filters.dead_filters drop <= 0"]\n')
    r = audit(*run, "--out", tmp_path / "o3")
    assert r.code == 2 and "gone/results.json" in r.err and not (tmp_path / "o3" / "report.html").exists(), r
