"""Probe-wide guarantees: escaped reports, out-of-memory retries."""

from __future__ import annotations

import torch

from tests.conftest import FAST, probe_context, read_results


def test_class_names_reach_the_report_as_text(audit, tmp_path):
    """Class names come from the user (--classes, folder names). Where a probe prints one, the page shows it as text:
    here the attacks probe's per-class table, which names every class it saw."""
    hostile = "<script>alert(1)</script>"
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join([hostile] + [str(i) for i in range(1, 10)]))
    out = tmp_path / "out"
    r = audit(
        "run",
        "--classes",
        classes,
        "--limit",
        "24",
        "--probes",
        "attacks",
        "--set",
        "attacks.eps=0.05",
        *FAST,
        "--out",
        out,
    )
    assert r.code == 0, r
    assert hostile in {row["class"] for row in read_results(out)["probes"]["attacks"]["details"]["per_class"]["rows"]}
    html = (out / "report.html").read_text()
    per_class = html[html.index("Per class, weakest first") :]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in per_class  # the name reached the page, escaped
    assert hostile not in html and "<script>alert" not in html


def test_out_of_gpu_memory_halves_the_batch_and_retries(digits_model, digits_test, tmp_path, capsys):
    from dataclasses import dataclass

    from auditor.probes.base import Probe
    from auditor.results import ProbeResult
    from auditor.runner import run_probe

    class Hungry(Probe):
        name, description, tasks = "hungry", "needs batch <= fits", ("classify",)

        @dataclass
        class Params:
            fits: int = 8

        def __init__(self, params=None):
            super().__init__(params)
            self.tried = []

        def run(self, ctx):
            self.tried.append(ctx.batch_size)
            if ctx.batch_size > self.params.fits:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return ProbeResult(status="ok", score=1.0)

    images, labels = digits_test
    ctx = probe_context("hungry", digits_model, tmp_path, images[:20], labels[:20], batch_size=64)
    probe = Hungry()
    result = run_probe(probe, ctx)
    assert probe.tried == [64, 32, 16, 8] and result.status == "ok" and result.details["batch_size"] == 8
    assert "batch size 64 ran out of GPU memory" in result.findings[-1].text
    assert capsys.readouterr().err.count("retrying") == 3
    never = Hungry(Hungry.Params(fits=0))
    failed = run_probe(never, ctx)
    assert never.tried == [64, 32, 16, 8, 4, 2, 1] and failed.status == "failed" and "batch size 1" in failed.error
