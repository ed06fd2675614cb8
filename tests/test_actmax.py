"""actmax: class images that the classifier recognises, one batch for all targets, repeatable runs, and the
Fourier parameterisation's algebra."""

from __future__ import annotations

import re

import pytest
import torch

from auditor.errors import AuditError
from auditor.models import ModelSpec, load_model
from auditor.probes.actmax import ActMaxProbe
from auditor.probes.actmax.parameterisation import COLOUR, IMAGE_SCALE, FourierImage, transform
from auditor.probes.base import parse_params
from tests.conftest import make_probe, probe_context


def probe(**params) -> ActMaxProbe:
    return make_probe(ActMaxProbe, **params)


def test_class_images_are_recognised_as_their_class(digits_model, digits_test, tmp_path):
    ctx = probe_context("actmax", digits_model, tmp_path, digits_test[0][:64], digits_test[1][:64])
    result = probe(steps=32, channels=1, layers="features.4.0").run(ctx)
    classes = result.details["classes"]
    assert [c["index"] for c in classes] == list(range(10))
    assert result.metrics["class_hit_rate"] >= 0.9 and result.metrics["class_confidence"] >= 0.9
    for c in classes:
        assert c["logit_end"] > c["logit_start"] + 10, c
    assert (tmp_path / "actmax" / "classes.png").is_file()
    assert set(result.details["captions"]) == set(result.artifacts)


def test_all_targets_are_one_batch_and_weights_get_no_gradient(digits_model, digits_test, tmp_path):
    """Forwards: one trace of the layers, one per evaluation batch, `steps` optimisation steps and one final pass."""
    images, labels = digits_test[0][:40], digits_test[1][:40]
    batches: list[int] = []
    handle = digits_model.net.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))
    try:
        result = probe(steps=5, channels=2).run(probe_context("actmax", digits_model, tmp_path, images, labels))
    finally:
        handle.remove()
    rows = 10 + 3 * 2
    assert result.details["batch"] == rows
    assert batches == [1, 32, 8] + [rows] * (5 + 1)
    assert all(p.grad is None for p in digits_model.parameters())
    assert [layer["name"] for layer in result.details["layers"]] == ["features.0.0", "features.2.0", "features.4.0"]
    assert result.details["layers"][0]["read_at"] == "features.0.1"  # after the batch norm


def test_seeded_runs_repeat_exactly(digits_model, digits_test, tmp_path):
    images, labels = digits_test[0][:16], digits_test[1][:16]

    def run(seed):
        ctx = probe_context("actmax", digits_model, tmp_path / str(seed), images, labels, seed=seed)
        r = probe(steps=4, channels=2, layers="features.4.0").run(ctx)
        return [c["logit_end"] for c in r.details["classes"]] + [
            a for layer in r.details["layers"] for a in layer["activation"]
        ]

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_bad_params(audit, digits_model, tmp_path):
    for bad in ({"steps": "0"}, {"channels": "0"}, {"lr": "0"}, {"size": "4"}, {"stepz": "3"}):
        with pytest.raises(AuditError):
            parse_params(ActMaxProbe, bad)
    r = audit("run", "--model", "digits-cnn", "--probes", "actmax", "--set", "actmax.steps=0", "--out", tmp_path)
    assert r.code == 2 and "actmax: steps must be at least 1" in r.err, r
    # Names that need the model are checked before any probe runs: a usage error too.
    r = audit(
        "run",
        "--model",
        "digits-cnn",
        "--probes",
        "actmax",
        "--set",
        "actmax.layers=features.0.9",
        "--limit",
        "8",
        "--out",
        tmp_path,
    )
    assert r.code == 2 and not (tmp_path / "results.json").exists(), r
    assert re.search(
        r"actmax: layers: no layer 'features\.0\.9' in the model \(did you mean features\.0\.\d\?\); "
        r"conv layers include features\.0\.0, features\.2\.0",
        r.err,
    ), r.err
    with pytest.raises(ValueError, match="'eleven' is neither a class name"):
        probe(classes="eleven").check(digits_model)


@pytest.mark.parametrize("name", ["shapes-unet", "shapes-yolov8n"])
def test_segmenter_and_detector_channel_galleries(name, tmp_path):
    model = load_model(ModelSpec(model=name)).eval()
    images = torch.rand(4, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, *model.input_size, dtype=torch.long) if model.task == "segment" else [torch.zeros(0, 5)] * 4
    ctx = probe_context("actmax", model, tmp_path, images, labels, labelled=False, batch_size=4)
    with pytest.raises(ValueError, match="size: the model does not run on a 100x100 canvas"):
        probe(size=100).check(model)  # 100 px does not halve down to the coarsest grid and back
    result = probe(steps=2, channels=2, size=64).run(ctx)
    assert result.status == "ok" and "class_hit_rate" not in result.metrics
    assert result.details["canvas"] == [64, 64] and result.details["batch"] == 3 * 2
    assert result.artifacts == ("actmax/channels_0.png", "actmax/channels_1.png", "actmax/channels_2.png")
    assert all((tmp_path / a).is_file() for a in result.artifacts)
    assert 0 <= result.metrics["channel_beats_data"] <= 1
    assert all(p.grad is None for p in model.parameters())
    # default layers are convs read after their batch norm: never a bare output conv (the U-Net's or YOLO's head)
    assert all(layer["read_at"] != layer["name"] for layer in result.details["layers"])


def test_fourier_parameterisation():
    g = torch.Generator().manual_seed(0)
    for channels, size in ((3, (12, 10)), (1, (9, 16))):
        image = FourierImage(2, channels, size, g, torch.device("cpu"))
        assert image().shape == (2, channels, *size)
        with torch.no_grad():
            image.spectrum.zero_()
        assert torch.equal(image(), torch.full((2, channels, *size), 0.5))  # zero spectrum: uniform mid-grey
        # Every image is reachable: the spectrum that yields a given pre-sigmoid image, through the inverse of the
        # colour matrix, the FFT and the 1/f scale, gives that image back.
        target = torch.randn(2, channels, *size)
        flat = torch.einsum("ij,njhw->nihw", torch.linalg.inv(COLOUR), target) if channels == 3 else target
        spectrum = torch.fft.rfft2(flat, norm="ortho") / (IMAGE_SCALE * image.scale)
        with torch.no_grad():
            image.spectrum.copy_(torch.view_as_real(spectrum))
        assert torch.allclose(image.linear(), target, atol=1e-4)
    assert torch.allclose(COLOUR.norm(dim=0).max(), torch.tensor(1.0))
    # White noise in the spectrum gives an image whose power falls with frequency (the 1/f prior).
    noise = FourierImage(1, 1, (64, 64), g, torch.device("cpu")).linear()[0, 0].detach()
    power = torch.fft.rfft2(noise).abs() ** 2
    assert power[1:4, 1:4].mean() > 50 * power[24:32, 24:32].mean()


def test_transform_draws_per_image_and_fills_grey():
    g = torch.Generator().manual_seed(0)
    grey = torch.full((4, 3, 32, 32), 0.5)
    assert torch.allclose(transform(grey, g), grey)
    copies = torch.rand(1, 1, 32, 32).expand(4, 1, 32, 32)
    out = transform(copies, g)
    assert all(not torch.allclose(out[0], out[i]) for i in range(1, 4))


def test_many_classes_show_the_most_predicted(tmp_path):
    from auditor.models.base import ClassifierAdapter, ModelFacts, Preprocess

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 120),
    )
    names = [f"c{i}" for i in range(120)]
    model = ClassifierAdapter(
        net,
        facts=ModelFacts(name="many", source="import"),
        class_names=names,
        input_size=(16, 16),
        channels=1,
        mean=(0.5,),
        std=(0.5,),
        preprocess=Preprocess(resize=16),
        epsilons=(),
    ).eval()
    images = torch.rand(200, 1, 16, 16)
    with torch.no_grad():
        counts = torch.bincount(model(images).argmax(1), minlength=120)
    ctx = probe_context("actmax", model, tmp_path, images, torch.zeros(200, dtype=torch.long))
    result = probe(steps=1, channels=1).run(ctx)
    shown = [c["index"] for c in result.details["classes"]]
    assert len(shown) == 16 and result.details["class_choice"] == "most predicted"
    assert sorted(counts[shown].tolist(), reverse=True) == sorted(counts.tolist(), reverse=True)[:16]
    assert any("predicts most often" in f.text and "c" + str(shown[0]) in f.text for f in result.findings)
    given = probe(steps=1, channels=1, classes="7,c3").run(ctx)
    assert [c["index"] for c in given.details["classes"]] == [7, 3] and given.details["class_choice"] == "given"
