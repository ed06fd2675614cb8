"""`audit run` end to end on the embedded default, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.results import validate
from tests.conftest import ATTACK_CHECKS, FAST, read_results


@pytest.mark.slow
@pytest.mark.xdist_group("default_run")  # one default audit per worker that runs these
def test_default_run_writes_every_output(default_run, digits_test):
    """`audit run` with no option (the session's default run): the zoo's digits-cnn on its whole held-out set."""
    out = default_run
    for name in ("results.json", "report.html", "junit.xml", "summary.md"):
        assert (out / name).is_file(), name
    res = read_results(out)
    validate(res)
    assert res["model"]["name"] == "digits-cnn" and res["model"]["source"] == "zoo"
    assert res["data"] == {**res["data"], "n": len(digits_test[1]), "labelled": True}
    attacks = res["probes"]["attacks"]
    assert attacks["status"] == "ok"
    assert attacks["metrics"]["clean_accuracy"] >= 0.9
    for eps in ("0.01", "0.02", "0.05", "0.1", "0.3"):
        assert 0 <= attacks["metrics"][f"robust_accuracy@linf={eps}"] <= attacks["metrics"]["clean_accuracy"]
    assert 0 <= attacks["score"] <= 1
    assert res["probes"]["filters"]["status"] == "ok" and res["probes"]["filters"]["score"] is None
    for rel in attacks["artifacts"] + res["probes"]["filters"]["artifacts"]:
        assert (out / rel).is_file()
    html = (out / "report.html").read_text()
    assert 'id="scorecard"' in html and 'id="probe-attacks"' in html and 'id="probe-filters"' in html
    assert html.count('src="data:image/') >= 3  # filters grid, accuracy curve, examples inlined
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("<script") == 1 and "<script src" not in html  # only the inline table sorter
    stdout = (out.parent / "audit.log").read_text().split("--- stdout\n", 1)[1].split("--- stderr\n", 1)[0]
    assert "digits-cnn" in stdout and "report:" in stdout


def test_same_seed_same_metrics(audit, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert audit("run", "--limit", "24", "--out", a, "--probes", "attacks", *FAST).code == 0
    assert audit("run", "--limit", "24", "--out", b, "--probes", "attacks", *FAST).code == 0
    ra, rb = read_results(a), read_results(b)
    assert ra["probes"]["attacks"]["metrics"] == rb["probes"]["attacks"]["metrics"]


def test_repeat_runs_seeds_on_one_subset_and_writes_the_spread(audit, tmp_path):
    out = tmp_path / "rep"
    r = audit("run", "--limit", "24", "--out", out, "--probes", "attacks", "--seed", "3", "--repeat", "2", *FAST)
    assert r.code == 0, r
    runs = [read_results(out / f"seed-{s}") for s in (3, 4)]
    assert [x["run"]["seed"] for x in runs] == [3, 4]
    assert runs[0]["data"]["digest"] == runs[1]["data"]["digest"]  # --limit kept seed 3's images
    line = next(x for x in r.out.splitlines() if x.startswith("attacks.score"))
    values = [x["probes"]["attacks"]["score"] for x in runs]
    assert float(line.split()[4]) == pytest.approx(max(values) - min(values), abs=1e-4)  # the spread column
    md = (out / "spread.md").read_text()
    assert "| attacks.robust\\_accuracy@linf=0.1 |" in md and "95% interval width" in md
    assert audit("spread", out / "seed-3", out / "seed-4", "--metrics", "attacks.*").code == 0


@pytest.mark.slow
def test_installed_command_is_quiet_when_not_a_terminal(tmp_path):
    """The `audit` script on PATH: no progress bars in a pipe, a short summary on stdout."""
    exe = Path(sys.executable).with_name("audit")
    proc = subprocess.run(
        [str(exe), "run", "--limit", "16", "--probes", "filters", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr
    assert "report:" in proc.stdout


@pytest.mark.slow
def test_progress_bars_on_a_terminal(tmp_path):
    """With stderr on a terminal, each probe shows a progress bar (two probes: the bars, not the probes, are tested)."""
    import os
    import pty
    import threading

    exe = Path(sys.executable).with_name("audit")
    master, slave = pty.openpty()
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(
        [str(exe), "run", "--limit", "16", "--probes", "attacks,filters", "--out", str(tmp_path / "o"), *FAST],
        stdout=subprocess.PIPE,
        stderr=slave,
        timeout=300,
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "attacks: 100%" in shown and "filters: 100%" in shown


def test_failing_probe_does_not_stop_the_run(audit, tmp_path, monkeypatch):
    from auditor.probes.attacks import AttacksProbe

    def crash(self, ctx):
        raise RuntimeError("the attack engine broke on batch 0")

    # A bad parameter no longer fails a probe (every probe's parameters are checked before any runs): a probe that
    # raises while it runs does. filters runs after attacks.
    monkeypatch.setattr(AttacksProbe, "run", crash)
    out = tmp_path / "out"
    r = audit("run", "--limit", "16", "--probes", "attacks,filters", "--out", out)
    assert r.code == 3, r
    res = read_results(out)
    validate(res)
    assert res["probes"]["attacks"]["status"] == "failed"
    assert "the attack engine broke on batch 0" in res["probes"]["attacks"]["error"]
    assert (out / "attacks" / "error.log").read_text().startswith("Traceback")
    assert res["probes"]["filters"]["status"] == "ok"
    html = (out / "report.html").read_text()
    assert "This probe failed" in html
    assert "attacks" in (out / "junit.xml").read_text()


def test_probe_selection_config_and_set(audit, tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('limit = 12\nselect = ["attacks"]\n[probes.attacks]\neps = ["0.1"]\nsteps = 2\n')
    out = tmp_path / "out"
    r = audit("run", "--config", cfg, "--set", "attacks.steps=4", "--out", out)
    assert r.code == 0, r
    res = read_results(out)
    assert list(res["probes"]) == ["attacks"] and res["data"]["n"] == 12
    assert res["probes"]["attacks"]["details"]["steps"] == 4  # --set overrides the file
    assert (
        set(res["probes"]["attacks"]["metrics"])
        == {"clean_accuracy", "robust_accuracy@linf=0.1", "apgd_accuracy@linf=0.1", "fgsm_accuracy@linf=0.1"}
        | ATTACK_CHECKS
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--probes", "nope"], "unknown probe"),
        (["--set", "attacks.nope=1"], "unknown parameter"),
        (["--set", "attacks.steps=many"], "attacks.steps"),
        (["--set", "broken"], "PROBE.KEY=VALUE"),
        (["--model", "no_such_model"], "unknown model"),
        (["--device", "tpu"], "--device"),
        (["--limit", "0"], "--limit"),
        (["--data", "/nonexistent/folder"], "no such folder"),
        (["--gate", "attacks.score >= lots"], "expected PROBE.METRIC OP NUMBER"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        # misspelt names get the closest valid one
        (["--model", "digits-cnm"], "did you mean digits-cnn?"),
        (["--model", "resnt50"], "did you mean resnet50?"),
        (["--probes", "atacks"], "did you mean attacks?"),
        (["--set", "attacks.step=3"], "did you mean steps?"),
        (["--set", "augmnt.shifts=fog"], "did you mean augment?"),
        (["--probes", "filters", "--gate", "filter.score >= 0"], "did you mean filters?"),
    ],
)
def test_usage_errors_exit_2_with_one_line(audit, tmp_path, args, message):
    r = audit("run", "--out", tmp_path / "out", *args)
    assert r.code == 2, r
    assert message in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "out" / "report.html").exists() and not (tmp_path / "out" / "results.json").exists()


def test_resume_reuses_finished_probes(audit, tmp_path):
    out = tmp_path / "out"
    run = ("run", "--limit", "12", "--probes", "attacks,filters", "--out", out)
    assert audit(*run, *FAST).code == 0
    first = read_results(out)["probes"]["attacks"]
    partial = json.loads((out / ".partial" / "attacks.json").read_text())
    partial["result"]["findings"].append({"severity": "info", "text": "marker from the first run"})
    (out / ".partial" / "attacks.json").write_text(json.dumps(partial))
    assert audit(*run, "--resume", *FAST).code == 0
    resumed = read_results(out)["probes"]["attacks"]
    assert resumed["findings"][-1]["text"] == "marker from the first run"
    assert resumed["metrics"] == first["metrics"]
    # different parameters: the saved result does not apply and the probe runs again
    assert audit(*run, "--resume", "--set", "attacks.steps=2").code == 0
    assert read_results(out)["probes"]["attacks"]["findings"][-1]["text"] != "marker from the first run"


def test_report_rerenders_from_saved_results(audit, tmp_path):
    out = tmp_path / "out"
    assert audit("run", "--limit", "12", "--out", out, "--probes", "filters").code == 0
    (out / "report.html").unlink()
    r = audit("report", out)
    assert r.code == 0 and (out / "report.html").is_file()


def test_list_commands(audit):
    r = audit("probes", "list")
    assert r.code == 0 and "attacks" in r.out and "filters" in r.out
    r = audit("zoo", "list")
    assert r.code == 0 and "digits-cnn" in r.out
    r = audit("zoo", "info", "digits-cnn")
    assert r.code == 0 and "sha256" in r.out and "0.01, 0.02, 0.05, 0.1, 0.3" in r.out
    assert audit("zoo", "info", "nope").code == 2
    r = audit("zoo", "info", "shapes-unte")
    assert r.code == 2 and "did you mean shapes-unet?" in r.err
