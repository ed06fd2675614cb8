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


def test_art_adversarials_stay_in_the_budget(digits_model, digits_test):
    """What the probe feeds back to the model is inside the L-inf ball and the pixel range."""
    from art.attacks.evasion import ProjectedGradientDescent

    from auditor.probes.attacks import _art_classifier

    ctx = context(digits_model, digits_test[0][:16], digits_test[1][:16], None)
    eps = 0.1
    pgd = ProjectedGradientDescent(_art_classifier(ctx), eps=eps, eps_step=0.025, max_iter=5, num_random_init=1,
                                   verbose=False)
    x = digits_test[0][:16].numpy()
    adv = pgd.generate(x=x, y=digits_test[1][:16].numpy())
    assert np.abs(adv - x).max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


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


def test_filters_grid_of_first_conv(digits_model, tmp_path):
    from PIL import Image

    from auditor.probes.filters import FiltersProbe

    ctx = context(digits_model, torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), tmp_path)
    ctx.probe_name = "filters"
    result = FiltersProbe().run(ctx)
    assert result.metrics["filters"] == 32 and result.details["shape"] == [32, 1, 3, 3]
    with Image.open(tmp_path / result.artifacts[0]) as im:
        assert im.width >= 6 * 30 and im.height >= 6 * 30  # 32 tiles, each upscaled to at least 30 px


def test_autoescaped_report(audit, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["<script>alert(1)</script>"] + [str(i) for i in range(1, 10)]))
    out = tmp_path / "out"
    r = audit("run", "--classes", classes, "--limit", "8", "--out", out, "--probes", "filters",
              "--gate", "warn: score >= 0")
    assert r.code == 0, r
    html = (out / "report.html").read_text()
    assert "<script>" not in html
