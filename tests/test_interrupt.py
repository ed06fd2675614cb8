"""Interrupted runs lose nothing: Ctrl-C writes a partial report and exits 130; after Ctrl-C or
kill -9, `--resume` finishes the run with the same results as one that was never stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # whole runs in subprocesses
# attacks runs first, then augment: long enough (a few seconds) to be stopped in
ARGS = [
    "run",
    "--model",
    "digits-cnn",
    "--limit",
    "120",
    "--probes",
    "attacks,augment",
    "--set",
    "attacks.steps=3",
    "--set",
    "attacks.gallery=2",
]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *ARGS, "--out", str(out), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_after_attacks(out: Path, sig: int) -> tuple[int, str]:
    proc = _start(out)
    deadline = time.monotonic() + 240
    while not (out / ".partial" / "attacks.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run ended or hung before attacks finished: {proc.communicate()}")
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _metrics(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {name: (p["status"], p["score"], p["metrics"]) for name, p in results["probes"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    proc = _start(out)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    return out


def test_same_seed_gives_the_same_metrics_run_after_run(uninterrupted, tmp_path):
    again = tmp_path / "again"
    proc = _start(again)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert _metrics(again) == _metrics(uninterrupted)


def test_ctrl_c_writes_a_partial_report_then_resume_finishes(uninterrupted, tmp_path):
    out = tmp_path / "run"
    code, err = _stop_after_attacks(out, signal.SIGINT)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    partial = json.loads((out / "results.json").read_text())
    assert list(partial["probes"]) == ["attacks"] and "during augment" in partial["run"]["partial"]
    html = (out / "report.html").read_text()
    assert "Partial report" in html and "INTERRUPTED" in html
    assert "INTERRUPTED" in (out / "summary.md").read_text()

    proc = _start(out, "--resume")
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert "partial" not in json.loads((out / "results.json").read_text())["run"]
    assert _metrics(out) == _metrics(uninterrupted)


def test_kill_9_then_resume_gives_the_uninterrupted_results(uninterrupted, tmp_path):
    out = tmp_path / "run"
    code, _ = _stop_after_attacks(out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "results.json").exists() and not list(out.glob("*.tmp"))
    proc = _start(out, "--resume")
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert _metrics(out) == _metrics(uninterrupted)
