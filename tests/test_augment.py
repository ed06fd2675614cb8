"""The corruptions against the reference definitions, the geometric shifts' reference maps, and the probe."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.probes.augment.corruptions import CORRUPTIONS, corrupt
from auditor.probes.augment.shifts import SHIFTS
from auditor.tasks.warp import warp_boxes, warp_images, warp_masks
from tests.conftest import read_results

# Published severities that do not grow monotonically away from the clean image. The
# reference behaves the same (bench env, four scikit-image photographs, mean |corrupted -
# clean|): snow 2 -> 3 (0.267 -> 0.263), frost 3 -> 4 (0.269 -> 0.257) and glass blur
# 3 -> 4 (0.083 -> 0.081) fall there too; fog 3 -> 4 rises by only 0.002. Elastic
# severities 1-2 of the script that made ImageNet-C are a large smooth warp, 3-5 small
# local ones (imagecorruptions 1.1.2 redefined them; this project keeps ImageNet-C's).
NOT_MONOTONE = {"elastic_transform", "glass_blur", "frost", "fog", "snow"}


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photographs shipped with ultralytics, centre-cropped to 224 px (where scale is exactly 1)."""
    import ultralytics
    from torchvision.transforms.v2.functional import center_crop, resize

    assets = Path(ultralytics.__file__).parent / "assets"
    images = [
        center_crop(resize(_tensor(Image.open(f).convert("RGB")), 224), 224) for f in sorted(assets.glob("*.jpg"))
    ]
    return torch.stack(images).clamp(0, 1)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_keeps_range_shape_and_repeats(name):
    x = torch.rand(3, 3, 61, 75, generator=_seeded(1))
    grey = x[:, :1]
    for image in (x, grey):
        for severity in (1, 5):
            y = corrupt(image, name, severity, _seeded(2))
            assert y.shape == image.shape and y.dtype == torch.float32
            assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
            assert torch.equal(y, corrupt(image, name, severity, _seeded(2))), "a seeded run must repeat exactly"
            assert not torch.equal(y, image), f"{name} at severity {severity} changed nothing"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_moves_the_image_further_from_clean(name, photos):
    distance = [(corrupt(photos, name, s, _seeded(3)) - photos).abs().mean().item() for s in range(1, 6)]
    assert distance[4] > distance[0] or name == "elastic_transform", distance
    if name not in NOT_MONOTONE:
        assert all(b > a for a, b in zip(distance, distance[1:])), distance


def test_noise_statistics_match_the_definitions():
    grey = torch.full((4, 3, 64, 64), 0.5)
    for severity, sigma in enumerate((0.08, 0.12, 0.18), start=1):  # small enough that clipping is rare
        residual = corrupt(grey, "gaussian_noise", severity, _seeded()) - grey
        assert abs(residual.std().item() - sigma) < 0.03 * sigma and abs(residual.mean().item()) < 0.003
    from scipy.stats import poisson

    for severity, rate in enumerate((60, 25, 12, 5, 3), start=1):  # min(Poisson(x * c) / c, 1)
        k = np.arange(200)
        values, weights = np.minimum(k / rate, 1), poisson.pmf(k, 0.3 * rate)
        mean = (values * weights).sum()
        var = ((values - mean) ** 2 * weights).sum()
        y = corrupt(torch.full((4, 3, 64, 64), 0.3), "shot_noise", severity, _seeded())
        assert abs(y.mean().item() - mean) < 0.005 and abs(y.var().item() - var) < 0.05 * var
    for severity, amount in enumerate((0.03, 0.06, 0.09, 0.17, 0.27), start=1):  # salt and pepper, half each
        y = corrupt(grey, "impulse_noise", severity, _seeded())
        changed = y != 0.5
        assert abs(changed.double().mean().item() - amount) < 0.01
        assert abs((y[changed] == 1).double().mean().item() - 0.5) < 0.05


def test_brightness_is_a_rise_of_hsv_value(photos):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    for severity, c in enumerate((0.1, 0.2, 0.3, 0.4, 0.5), start=1):
        hsv = rgb_to_hsv(photos[0].permute(1, 2, 0).numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        expected = hsv_to_rgb(hsv)
        got = corrupt(photos[:1], "brightness", severity)[0].permute(1, 2, 0).numpy()
        assert np.abs(got - expected).max() < 1e-5


def test_contrast_scales_around_the_channel_means(photos):
    x = photos[0].permute(1, 2, 0).numpy().astype(np.float64)
    for severity, c in enumerate((0.4, 0.3, 0.2, 0.1, 0.05), start=1):
        mean = x.mean(axis=(0, 1), keepdims=True)
        expected = np.clip((x - mean) * c + mean, 0, 1)
        got = corrupt(photos[:1], "contrast", severity)[0].permute(1, 2, 0).numpy()
        assert np.abs(got - expected).max() < 1e-5


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def test_pixelate_matches_pillows_box_resampling(photos):
    x = torch.stack([_tensor(_pil(p)) for p in photos])  # 8-bit, as the reference sees it
    for severity, c in enumerate((0.6, 0.5, 0.4, 0.3, 0.25), start=1):
        small = _pil(x[0]).resize((int(224 * c), int(224 * c)), Image.BOX)
        expected = _tensor(small.resize((224, 224), Image.BOX))
        got = corrupt(x[:1], "pixelate", severity)[0]
        assert (got - expected).abs().max() < 1.5 / 255  # Pillow rounds to 8 bits after each pass


def test_jpeg_matches_pillow_at_the_published_qualities(photos):
    for severity, quality in enumerate((25, 18, 15, 10, 7), start=1):
        buffer = io.BytesIO()
        _pil(photos[0]).save(buffer, "JPEG", quality=quality)
        expected = _tensor(Image.open(buffer).convert("RGB"))
        got = corrupt(photos[:1], "jpeg_compression", severity)[0]
        assert torch.equal(got, expected)  # the same encoder: the same bytes


def test_defocus_blur_matches_opencv(photos):
    cv2 = pytest.importorskip("cv2")  # opencv comes with ultralytics
    x = photos[0].permute(1, 2, 0).numpy()
    for severity, (radius, alias) in enumerate(((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)), start=1):
        span = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
        xx, yy = np.meshgrid(span, span)
        disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
        kernel = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3) if radius <= 8 else (5, 5), sigmaX=alias)
        expected = np.clip(np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], -1), 0, 1)
        got = corrupt(photos[:1], "defocus_blur", severity)[0].permute(1, 2, 0).numpy()
        assert np.abs(got - expected).max() < 1e-4, severity


def test_zoom_blur_matches_scipy_zoom(photos):
    from scipy.ndimage import zoom

    x = photos[0].permute(1, 2, 0).numpy()
    factors = np.arange(1, 1.11, 0.01)  # severity 1
    out = np.zeros_like(x)
    for f in factors:
        ch = int(np.ceil(224 / f))
        top = (224 - ch) // 2
        big = zoom(x[top : top + ch, top : top + ch], (f, f, 1), order=1)
        trim = (big.shape[0] - 224) // 2
        out += big[trim : trim + 224, trim : trim + 224]
    expected = (x + out) / (len(factors) + 1)
    got = corrupt(photos[:1], "zoom_blur", 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).mean() < 2e-3


def test_spatial_parameters_scale_with_the_image():
    small = torch.zeros(1, 1, 28, 28)
    small[..., 14, 14] = 1
    # at 28 px the severity-5 defocus disk (radius 10 at 224 px) has radius 1.25: the blur stays local
    blurred = corrupt(small, "defocus_blur", 5)
    assert blurred[0, 0, 14, 11] < 1e-6 and blurred[0, 0, 14, 13] > 0.01
    unscaled = corrupt(small, "defocus_blur", 5, scale=1.0)
    assert unscaled[0, 0, 14, 5] > 0.001


# ---------------------------------------------------------------- geometric shifts and their reference maps


def test_hflip_moves_masks_and_boxes_with_the_image():
    x = torch.zeros(1, 3, 20, 30)
    x[..., 2:6, 3:9] = 1
    flipped, affine = SHIFTS["hflip"].apply(x, 1, _seeded(), None)
    mask = (x[:, 0] > 0).long()
    assert torch.equal(warp_masks(mask, affine), mask.flip(-1))
    boxes = warp_boxes([torch.tensor([[1.0, 3, 2, 9, 6]])], affine, 20, 30)
    assert torch.allclose(boxes[0], torch.tensor([[1.0, 21, 2, 27, 6]]))
    assert torch.equal(flipped, x.flip(-1))


def test_rotation_matches_rot90_for_images_masks_and_boxes():
    from auditor.probes.augment.shifts import _centred

    x = torch.rand(1, 1, 16, 16, generator=_seeded())
    quarter = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]])
    affine = _centred(16, 16, quarter)
    rotated = warp_images(x, affine)
    expected = torch.rot90(x, k=1, dims=(-2, -1))
    assert torch.allclose(rotated, expected, atol=1e-5) or torch.allclose(
        rotated, torch.rot90(x, -1, (-2, -1)), atol=1e-5
    )
    same = torch.allclose(rotated, expected, atol=1e-5)
    mask = (x[:, 0] > 0.5).long()
    assert torch.equal(warp_masks(mask, affine), torch.rot90(mask, 1 if same else -1, (-2, -1)))
    box = torch.tensor([[0.0, 2, 3, 6, 5]])  # class 0, x 2..6, y 3..5
    moved = warp_boxes([box], affine, 16, 16)[0][0, 1:]
    pixels = torch.zeros(16, 16)
    pixels[3:5, 2:6] = 1
    turned = torch.rot90(pixels, 1 if same else -1, (-2, -1))
    ys, xs = torch.nonzero(turned, as_tuple=True)
    assert torch.allclose(moved, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float(), atol=1e-4)


def test_translation_keeps_only_visible_boxes_and_marks_new_pixels_ignored():
    x = torch.ones(1, 3, 10, 10)
    affine = torch.eye(3)[None].clone()
    affine[0, 0, 2] = -6  # content moves 6 px right
    boxes = warp_boxes([torch.tensor([[0.0, 0, 0, 3, 3], [1.0, 5, 5, 9, 9]])], affine, 10, 10)[0]
    assert boxes.tolist() == [[0.0, 6.0, 0.0, 9.0, 3.0]]  # the second box is 3/4 out of the frame: dropped
    mask = warp_masks(torch.zeros(1, 10, 10, dtype=torch.uint8), affine)
    assert (mask[0, :, :6] == 255).all() and (mask[0, :, 6:] == 0).all()
    assert warp_images(x, affine)[0, :, :, :6].abs().max() < 1e-5 and warp_images(x, affine)[0, :, :, 7:].min() > 0.99


# ---------------------------------------------------------------- the probe

SMALL = ["--set", "augment.shifts=contrast,gaussian_noise,hflip,rotate"]


def test_probe_metrics_score_and_gate(audit, tmp_path):
    out = tmp_path / "run"
    r = audit(
        "run",
        "--model",
        "digits-cnn",
        "--probes",
        "augment",
        "--limit",
        "60",
        *SMALL,
        "--out",
        out,
        "--gate",
        "augment.relative@hflip >= 0.9",
    )
    assert r.code == 1, r  # digits are not mirror-symmetric: the gate must fail
    res = read_results(out)["probes"]["augment"]
    m = res["metrics"]
    for shift in ("contrast", "gaussian_noise", "rotate"):
        for lv in range(1, 6):
            assert 0 <= m[f"accuracy@{shift}:{lv}"] <= 1 and 0 <= m[f"flip_rate@{shift}:{lv}"] <= 1
    assert "accuracy@hflip:1" in m and "accuracy@hflip:2" not in m
    rel = [
        np.mean([m[f"accuracy@{c}:{lv}"] for lv in range(1, 6)]) / m["clean_accuracy"]
        for c in ("contrast", "gaussian_noise")
    ]
    assert m["relative@contrast"] == pytest.approx(rel[0])
    assert res["score"] == pytest.approx(np.mean([min(v, 1) for v in rel]))  # ImageNet-C corruptions only
    assert {"augment/examples_digital.png", "augment/examples_geometric.png"} <= set(res["artifacts"])
    html = (out / "report.html").read_text()
    assert "heat" in html and "gaussian_noise" in html


def test_flip_rate_is_the_complement_of_label_free_agreement(audit, tmp_path, digits_flat):
    out = tmp_path / "run"
    assert (
        audit("run", "--model", "digits-cnn", "--data", digits_flat, "--probes", "augment", *SMALL, "--out", out).code
        == 0
    )
    m = read_results(out)["probes"]["augment"]["metrics"]
    assert "clean_accuracy" not in m
    for lv in range(1, 6):
        assert m[f"flip_rate@contrast:{lv}"] == pytest.approx(1 - m[f"accuracy@contrast:{lv}"])


def test_corruption_error_against_a_reference_run(audit, tmp_path):
    base = tmp_path / "base"
    args = ["--model", "digits-cnn", "--probes", "augment", "--limit", "40", "--set", "augment.shifts=contrast,fog"]
    assert audit("run", *args, "--out", base).code == 0
    again = tmp_path / "again"
    assert audit("run", *args, "--set", f"augment.reference={base / 'results.json'}", "--out", again).code == 0
    first, second = read_results(base)["probes"]["augment"], read_results(again)["probes"]["augment"]
    assert {k: v for k, v in second["metrics"].items() if "@" in k and not k.startswith("ce@")} == {
        k: v for k, v in first["metrics"].items() if "@" in k
    }, "same seed, same metrics"
    assert second["metrics"]["ce@contrast"] == pytest.approx(1.0) and second["metrics"]["mce"] == pytest.approx(1.0)


def test_alexnet_reference_uses_the_published_errors():
    from auditor.probes.augment import AugmentProbe
    from auditor.probes.augment.corruption_error import ALEXNET_ERRORS

    class Thousand:
        task, num_classes = "classify", 1000

    values = {c: {s: 0.5 for s in range(1, 6)} for c in CORRUPTIONS}
    metrics, described, note = AugmentProbe()._corruption_errors(
        values, 0.8, "accuracy", [1, 2, 3, 4, 5], Thousand(), True
    )
    assert "AlexNet" in described and note is None
    assert metrics["ce@fog"] == pytest.approx(0.5 / 0.819324)
    assert metrics["mce"] == pytest.approx(np.mean([0.5 / e for e in ALEXNET_ERRORS.values()]))
    assert math.isclose(ALEXNET_ERRORS["gaussian_noise"], 0.886428)


@pytest.mark.slow
def test_segmenter_and_detector_follow_geometric_shifts(audit, tmp_path):
    """A flip moves masks and boxes with the image: models of symmetric shapes keep their score."""
    for model, metric in (("shapes-unet", "miou"), ("shapes-yolov8n", "map50")):
        out = tmp_path / model
        r = audit(
            "run",
            "--model",
            model,
            "--probes",
            "augment",
            "--limit",
            "8",
            "--set",
            "augment.shifts=hflip,fog",
            "--set",
            "augment.severities=5",
            "--out",
            out,
        )
        assert r.code == 0, r
        res = read_results(out)["probes"]["augment"]
        m = res["metrics"]
        assert m["relative@hflip"] >= 0.9, m
        assert 0 <= m[f"{metric}@fog:5"] <= 1 and f"{metric}@fog:1" not in m
        assert json.dumps(res)  # serialisable


def test_unknown_shift_and_bad_severity_are_one_line_before_anything_runs(audit, tmp_path):
    r = audit(
        "run", "--model", "digits-cnn", "--probes", "augment", "--set", "augment.shifts=fogg", "--out", tmp_path / "o"
    )
    assert r.code == 2 and "did you mean fog?" in r.err and "Traceback" not in r.err
    r = audit(
        "run",
        "--model",
        "digits-cnn",
        "--probes",
        "augment",
        "--set",
        "augment.severities=0,6",
        "--out",
        tmp_path / "o",
    )
    assert r.code == 2 and "1..5" in r.err
    assert not (tmp_path / "o" / "results.json").exists()


def test_findings_name_the_worst_shifts_or_say_none_hurt():
    from auditor.probes.augment import AugmentProbe

    def row(name, rel, worst):
        return {"shift": name, "family": "noise", "relative": rel, "cells": [{"level": "5", "value": worst}]}

    probe = AugmentProbe()
    hurt = probe._findings(
        [row("fog", 0.4, 0.1), row("snow", 0.7, 0.5), row("rotate", 0.99, 0.97)],
        0.9,
        "accuracy",
        1.0,
        True,
        [],
        ({}, None, None),
    )
    assert [(f.severity, f.text.split()[0]) for f in hurt] == [("high", "fog"), ("medium", "snow")]
    calm = probe._findings([row("rotate", 0.99, 0.97)], 0.9, "accuracy", 1.0, True, [], ({}, None, None))
    assert len(calm) == 1 and "no shift tested" in calm[0].text and "rotate, 99%" in calm[0].text
