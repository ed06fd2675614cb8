"""Probe-wide guarantees: escaped reports, out-of-memory retries."""

from __future__ import annotations

import pytest
import torch

from auditor.models import ModelSpec, load_model


@pytest.fixture(scope="module")
def digits_model():
    return load_model(ModelSpec(model="digits-cnn")).eval()


def test_autoescaped_report(audit, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["<script>alert(1)</script>"] + [str(i) for i in range(1, 10)]))
    out = tmp_path / "out"
    r = audit(
        "run", "--classes", classes, "--limit", "8", "--out", out, "--probes", "filters", "--gate", "warn: score >= 0"
    )
    assert r.code == 0, r
    html = (out / "report.html").read_text()
    assert "<script>alert(1)" not in html


def test_out_of_gpu_memory_halves_the_batch_and_retries(digits_model, digits_test, tmp_path, capsys):
    from dataclasses import dataclass

    from auditor.data import EvalData
    from auditor.probes.base import Context, Probe
    from auditor.results import ProbeResult
    from auditor.runner import make_progress, run_probe

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
    data = EvalData(name="d", images=images[:20], labels=labels[:20], labelled=True, source="zoo", total=20)
    ctx = Context(
        adapter=digits_model,
        data=data,
        device=torch.device("cpu"),
        seed=0,
        batch_size=64,
        out_dir=tmp_path,
        probe_name="hungry",
        progress=make_progress(False),
    )
    probe = Hungry()
    result = run_probe(probe, ctx)
    assert probe.tried == [64, 32, 16, 8] and result.status == "ok" and result.details["batch_size"] == 8
    assert "batch size 64 ran out of GPU memory" in result.findings[-1].text
    assert capsys.readouterr().err.count("retrying") == 3
    never = Hungry(Hungry.Params(fits=0))
    failed = run_probe(never, ctx)
    assert never.tried == [64, 32, 16, 8, 4, 2, 1] and failed.status == "failed" and "batch size 1" in failed.error
