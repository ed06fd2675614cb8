"""The probes' own guarantees: attacks stay in budget and are strong; filters show the first layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.data import EvalData
from auditor.errors import AuditError
from auditor.models import ModelSpec, load_model
from auditor.probes.attacks import AttacksProbe, parse_eps
from auditor.probes.base import Context, parse_params
from auditor.runner import make_progress


@pytest.fixture(scope="module")
def digits_model():
    return load_model(ModelSpec(model="digits-cnn")).eval()


def context(model, images, labels, tmp_path) -> Context:
    data = EvalData(name="t", images=images, labels=labels, labelled=True, source="zoo", total=len(labels))
    return Context(adapter=model, data=data, device=torch.device("cpu"), seed=0, batch_size=32, out_dir=tmp_path,
                   probe_name="attacks", progress=make_progress(False))


def test_parse_eps():
    assert parse_eps("2/255") == pytest.approx(2 / 255) and parse_eps("0.1") == 0.1
    for bad in ("0", "-0.1", "1.5", "x"):
        with pytest.raises(ValueError):
            parse_eps(bad)


def test_pgd_reaches_near_zero_at_03_and_is_stronger_than_fgsm(digits_model, digits_test, tmp_path):
    images, labels = digits_test[0][:64], digits_test[1][:64]
    probe = AttacksProbe(parse_params(AttacksProbe, {"eps": "0.1,0.3", "steps": "20"}))
    result = probe.run(context(digits_model, images, labels, tmp_path))
    m = result.metrics
    assert m["clean_accuracy"] >= 0.95
    assert m["robust_accuracy@linf=0.3"] <= 0.02
    for eps in ("0.1", "0.3"):
        assert m[f"robust_accuracy@linf={eps}"] <= m[f"fgsm_accuracy@linf={eps}"]
    assert result.score == pytest.approx(np.mean([m["robust_accuracy@linf=0.1"], m["robust_accuracy@linf=0.3"]]) / m["clean_accuracy"])


@pytest.mark.parametrize("engine_class", ["ArtClassifierAttack", "TorchAttack"])
def test_adversarials_stay_in_the_budget(digits_model, digits_test, engine_class):
    """What both engines feed back to the model is inside the L-inf ball and the pixel range."""
    import auditor.probes.attacks as attacks

    ctx = context(digits_model, digits_test[0][:16], digits_test[1][:16], None)
    engine = getattr(attacks, engine_class)(ctx, steps=5, step_factor=2.5, restarts=2)
    x, eps = digits_test[0][:16], 0.1
    for adv in engine(x, digits_test[1][:16], eps):
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_torch_engine_is_as_strong_as_art(digits_model, digits_test):
    """The torch loop (the segmenters' engine) and ART's PGD agree on the same classifier and budget."""
    from auditor.probes.attacks import ArtClassifierAttack, TorchAttack

    images, labels = digits_test[0][:96], digits_test[1][:96]
    ctx = context(digits_model, images, labels, None)
    rates = []
    for engine in (ArtClassifierAttack(ctx, 10, 2.5, 1), TorchAttack(ctx, 10, 2.5, 1)):
        _, adv = engine(images, labels, 0.05)
        with torch.no_grad():
            rates.append((digits_model.predict(adv) == labels).double().mean().item())
    assert abs(rates[0] - rates[1]) <= 0.05, rates


def test_attack_matches_a_plain_torch_pgd(digits_model, digits_test, tmp_path):
    """The ART path agrees with an independent PGD written in plain torch (same budget, steps)."""
    images, labels = digits_test[0][:64], digits_test[1][:64]
    eps, steps = 0.1, 20
    torch.manual_seed(0)
    x = (images + torch.empty_like(images).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(digits_model(x), labels)
        grad, = torch.autograd.grad(loss, x)
        x = torch.min(torch.max(x.detach() + 2.5 * eps / steps * grad.sign(), images - eps), images + eps).clamp(0, 1)
    with torch.no_grad():
        plain = (digits_model(x).argmax(1) == labels).double().mean().item()
    probe = AttacksProbe(parse_params(AttacksProbe, {"eps": "0.1", "steps": str(steps)}))
    ours = probe.run(context(digits_model, images, labels, tmp_path)).metrics["robust_accuracy@linf=0.1"]
    assert abs(ours - plain) <= 0.05


def test_unknown_and_badly_typed_params():
    with pytest.raises(AuditError, match="valid: eps, gallery, restarts, step_factor, steps"):
        parse_params(AttacksProbe, {"epsilon": "0.1"})
    with pytest.raises(AuditError):
        parse_params(AttacksProbe, {"steps": "2.5"})
    assert parse_params(AttacksProbe, {"eps": ["0.1", "2/255"]}).eps == ("0.1", "2/255")


def test_autoescaped_report(audit, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["<script>alert(1)</script>"] + [str(i) for i in range(1, 10)]))
    out = tmp_path / "out"
    r = audit("run", "--classes", classes, "--limit", "8", "--out", out, "--probes", "filters",
              "--gate", "warn: score >= 0")
    assert r.code == 0, r
    html = (out / "report.html").read_text()
    assert "<script>" not in html


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
    ctx = Context(adapter=digits_model, data=data, device=torch.device("cpu"), seed=0, batch_size=64,
                  out_dir=tmp_path, probe_name="hungry", progress=make_progress(False))
    probe = Hungry()
    result = run_probe(probe, ctx)
    assert probe.tried == [64, 32, 16, 8] and result.status == "ok" and result.details["batch_size"] == 8
    assert "batch size 64 ran out of GPU memory" in result.findings[-1].text
    assert capsys.readouterr().err.count("retrying") == 3
    never = Hungry(Hungry.Params(fits=0))
    failed = run_probe(never, ctx)
    assert never.tried == [64, 32, 16, 8, 4, 2, 1] and failed.status == "failed" and "batch size 1" in failed.error
