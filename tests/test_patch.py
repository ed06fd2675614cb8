"""patch: a large patch does turn digits, patches never see the held-out images, every task produces its metrics,
the target can be chosen, and the geometry covers the share of the image it claims."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from auditor.errors import AuditError
from auditor.models import ModelSpec, load_model
from auditor.probes.base import parse_params
from auditor.probes.patch import PatchProbe
from auditor.probes.patch import training as training_module
from auditor.probes.patch.geometry import Placement, paste, patched, tile_extent
from auditor.probes.patch.training import SPLIT_SEED, split
from tests.conftest import make_probe, probe_context, read_results

FAST = ["--set", "patch.steps=2", "--set", "patch.gallery=2"]
STEPS = 40  # enough for a 30% patch to turn every held-out digit (an untrained one turns about 10%)


def probe(**params) -> PatchProbe:
    return make_probe(PatchProbe, **params)


def context(model, images, labels, out_dir):
    """patch alone in the run, 64 images a batch."""
    return probe_context("patch", model, out_dir, images, labels, batch_size=64, probes=("patch",))


def test_a_large_patch_turns_held_out_digits_into_the_target(digits_model, digits_test, tmp_path):
    """At 30% of the image a trained patch must turn most held-out digits; an untrained one of that size must not."""
    ctx = context(digits_model, digits_test[0][:160], digits_test[1][:160], tmp_path)
    result = probe(scales="0.3", score_scale=0.3, steps=STEPS, restarts=1, target=8, gallery=3).run(ctx)
    m, d = result.metrics, result.details
    _, _, turned, random_turned, changed, _ = d["rows"][0]
    assert m["success_rate@scale=0.3"] == turned >= 0.8, d["rows"]
    assert turned - random_turned >= 0.6, d["rows"]  # an untrained patch of that size turns about a tenth
    assert m["untargeted_success_rate@scale=0.3"] == changed >= 0.6, d["rows"]
    assert m["min_scale_for_half"] == 0.3 and result.score == pytest.approx(1 - turned)
    assert d["target"] == {"index": 8, "name": "8", "choice": "given"}
    assert d["train_images"] == d["held_out_images"] == 80
    for name in ("patches.png", "success.png", "examples.png", "patches.pt"):
        assert (tmp_path / "patch" / name).stat().st_size > 500, name
    saved = torch.load(tmp_path / "patch" / "patches.pt")
    assert saved["targeted"]["0.3"].shape == (1, 15, 15)  # sqrt(0.3 * 28 * 28) px a side
    # every rate keeps its held-out images' outcomes (for McNemar) and a Wilson interval around it; the score too
    for key in ("success_rate@scale=0.3", "untargeted_success_rate@scale=0.3"):
        bits = result.paired[key]["outcomes"]
        assert len(bits) == 80 and bits.count("1") / (80 - bits.count("-")) == pytest.approx(m[key])
        assert result.intervals[key][0] <= m[key] <= result.intervals[key][1]
    assert result.intervals["score"][0] <= result.score <= result.intervals["score"][1]
    assert result.paired["score"]["n"] == 80


def test_the_split_is_seeded_disjoint_and_complete():
    for n in (2, 3, 10, 451):
        train, test = split(n, 0.5, seed=3)
        assert len(train) and len(test) and not set(train.tolist()) & set(test.tolist())
        assert sorted(train.tolist() + test.tolist()) == list(range(n))
    assert torch.equal(split(40, 0.25, 7)[1], split(40, 0.25, 7)[1]) and len(split(40, 0.25, 7)[1]) == 10
    assert not torch.equal(split(40, 0.5, 1)[1], split(40, 0.5, 2)[1])
    assert torch.equal(split(40, 0.5)[1], split(40, 0.5, SPLIT_SEED)[1])  # the probe's: one fixed seed


def test_patches_never_see_the_held_out_images(digits_model, digits_test, tmp_path, monkeypatch):
    """Training gets the training split alone; replacing every held-out image by noise changes no patch."""
    images, labels = digits_test[0][:48].clone(), digits_test[1][:48]
    train_idx, test_idx = split(len(images), 0.5)
    seen: list[torch.Tensor] = []
    trained: list[dict] = []
    real = training_module.train_patches

    def spy(adapter, goal, scales, mode, *args):
        seen.append(goal.images.clone())
        patches = real(adapter, goal, scales, mode, *args)
        trained.append({"mode": mode, "target": goal.target, "patches": patches})
        return patches

    monkeypatch.setattr(training_module, "train_patches", spy)
    params = {"scales": "0.1,0.2", "steps": 4, "restarts": 1, "gallery": 0}
    probe(**params).run(context(digits_model, images, labels, tmp_path / "a"))
    assert len(seen) == 2  # untargeted, then targeted
    for x in seen:
        torch.testing.assert_close(x, images[train_idx])
        held_out = images[test_idx].flatten(1)
        assert not (x.flatten(1)[:, None] == held_out[None]).all(-1).any()  # no held-out image among them

    first = trained[:]
    trained.clear()
    noisy = images.clone()
    noisy[test_idx] = torch.rand(noisy[test_idx].shape, generator=torch.Generator().manual_seed(1))
    result = probe(**params).run(context(digits_model, noisy, labels, tmp_path / "b"))
    assert [t["mode"] for t in trained] == ["untargeted", "targeted"]
    for a, b in zip(first, trained):
        assert a["target"] == b["target"]  # the target is chosen on the training split too
        for pa, pb in zip(a["patches"], b["patches"]):
            assert torch.equal(pa, pb)
    assert result.details["held_out_images"] == len(test_idx)


def test_two_seeds_score_on_the_same_held_out_images_at_the_same_places(digits_model, digits_test, tmp_path):
    """Only training follows the seed: the held-out split, the places and the random patches do not, so a random
    patch scores alike and the same images count in both runs (what a paired test between runs needs)."""
    images, labels = digits_test[0][:40], digits_test[1][:40]
    runs = [
        probe(scales="0.2", score_scale=0.2, steps=2, restarts=1, target=3, gallery=0).run(
            probe_context("patch", digits_model, tmp_path / str(seed), images, labels, seed=seed)
        )
        for seed in (0, 1)
    ]
    rows = [r.details["rows"][0] for r in runs]
    assert rows[0][3] == rows[1][3] and rows[0][5] == rows[1][5], rows  # the random patch's two columns
    for key in ("success_rate@scale=0.2", "untargeted_success_rate@scale=0.2"):
        counted = [[bit != "-" for bit in r.paired[key]["outcomes"]] for r in runs]
        assert counted[0] == counted[1] and len(counted[0]) == 20
    assert not torch.equal(
        *[torch.load(tmp_path / str(seed) / "patch" / "patches.pt")["targeted"]["0.2"] for seed in (0, 1)]
    )


def test_restarts_keep_the_strongest_patch_per_scale(digits_model, digits_test, tmp_path, monkeypatch):
    """Of three restarts (untrained, trained, untrained), the trained one wins on the training images and is kept;
    the spread reports the weakest and the strongest."""
    from auditor.probes.patch.goals import ClassifyGoal
    from auditor.probes.patch.training import Training, strongest, train_patches

    ctx = context(digits_model, digits_test[0][:80], digits_test[1][:80], tmp_path)
    goal = ClassifyGoal.from_data(ctx, torch.arange(80))
    goal.target = 8
    bar = SimpleNamespace(update=lambda n: None)
    trained = train_patches(digits_model, goal, [0.3], "targeted", Training(STEPS, 32, 0.2, ctx.generator(), 64, bar))
    untrained = [torch.rand(1, 15, 15, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    draws = iter([[untrained[0]], trained, [untrained[1]]])
    monkeypatch.setattr(training_module, "train_patches", lambda *args: next(draws))
    restarts = strongest(digits_model, goal, [0.3], "targeted", Training(1, 32, 0.2, ctx.generator(), 64, bar, 3))
    success = [r[0] for r in restarts.success]
    assert restarts.kept == [1] and restarts.best()[0] is trained[0], success
    assert success[1] >= 0.6 > max(success[0], success[2]), success
    assert restarts.spread() == [[round(min(success), 6), round(max(success), 6)]] and restarts.judged_on == 80


@pytest.mark.parametrize("model", ["digits-cnn", pytest.param("shapes-yolov8n", marks=pytest.mark.slow), "shapes-unet"])
def test_estimates_equal_the_metrics(model, tmp_path):
    """Each metric's per-image estimate (what its interval and a paired test resample) has the metric's value."""
    from auditor.data import load_data
    from auditor.probes.patch.goals import Scoring, goal_for

    adapter = load_model(ModelSpec(model=model)).eval()
    ctx = probe_context("patch", adapter, tmp_path, data=load_data(adapter, None, limit=12, seed=0))
    goal = goal_for(ctx.task).from_data(ctx, torch.arange(12))
    goal.target = 1
    draw = torch.Generator().manual_seed(0)
    patches = {
        m: [torch.rand(adapter.channels, s, s, generator=draw) for s in goal.patch_sides([0.1, 0.3])]
        for m in goal.modes
    }
    scored = goal.evaluate(patches, [0.1, 0.3], Scoring(4, SimpleNamespace(update=lambda n: None)))
    assert set(scored.estimates) == set(scored.metrics)
    for key, value in scored.metrics.items():
        assert scored.estimates[key].value == pytest.approx(value, rel=1e-6), key  # torchmetrics: float32


def test_iou_counts_sum_to_the_torchmetrics_miou():
    from auditor.metrics import iou_counts, mean_iou_score
    from auditor.stats import MeanIoU

    draw = torch.Generator().manual_seed(0)
    target, pred = torch.randint(0, 4, (2, 5, 16, 16), generator=draw)
    target[:, :2] = 255  # ignored pixels
    pred[pred == 3] = 2  # class 3 never predicted
    inter, union = iou_counts(pred, target, 5)  # class 4 in neither: left out of the mean
    assert inter.shape == union.shape == (5, 5) and (union[:, 4] == 0).all()
    assert MeanIoU(inter, union).value == pytest.approx(mean_iou_score(pred, target, 5))
    assert MeanIoU(inter[:1], union[:1]).value == pytest.approx(mean_iou_score(pred[:1], target[:1], 5))


def test_same_seed_same_results(digits_model, digits_test, tmp_path):
    ctx = context(digits_model, digits_test[0][:40], digits_test[1][:40], tmp_path)
    a = probe(steps=3, gallery=2).run(ctx)
    b = probe(steps=3, gallery=2).run(ctx)
    assert a.metrics == b.metrics and a.details["rows"] == b.details["rows"]
    assert a.details["target"] == b.details["target"]


def test_target_chosen_by_set_by_name_or_index(audit, tmp_path):
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "digits-cnn",
        "--limit",
        "30",
        "--probes",
        "patch",
        "--set",
        "patch.target=7",
        "--out",
        out,
        *FAST,
    )
    assert r.code == 0, r
    res = read_results(out)["probes"]["patch"]
    assert res["status"] == "ok" and res["details"]["target"] == {"index": 7, "name": "7", "choice": "given"}
    assert set(res["metrics"]) >= {
        f"{k}@scale={s}" for k in ("success_rate", "untargeted_success_rate") for s in ("0.02", "0.05", "0.1", "0.2")
    } | {"min_scale_for_half"}
    assert any("'7' (given by patch.target)" in f["text"] for f in res["findings"])
    html = (out / "report.html").read_text()
    assert 'id="probe-patch"' in html and "targeted: → 7" in html
    # Names win over indices, and an index works where the names are words.
    animals = SimpleNamespace(task="classify", class_names=["cat", "dog", "3"])
    assert probe(target="dog")._given_target(animals) == 1
    assert probe(target="1")._given_target(animals) == 1
    assert probe(target="3")._given_target(animals) == 2


def test_default_target_is_the_class_the_untargeted_patch_drifts_to(digits_model, digits_test, tmp_path):
    result = probe(scales="0.2", score_scale=0.2, steps=20, gallery=0).run(
        context(digits_model, digits_test[0][:80], digits_test[1][:80], tmp_path)
    )
    assert result.details["target"]["choice"] == "auto"
    assert any("as the one a screening patch turned most training images into" in f.text for f in result.findings)


def test_bad_target_and_params_are_usage_errors(audit, digits_model, tmp_path):
    r = audit(
        "run",
        "--model",
        "digits-cnn",
        "--limit",
        "8",
        "--probes",
        "patch",
        "--set",
        "patch.target=eleven",
        "--out",
        tmp_path / "a",
    )
    assert r.code == 2 and not (tmp_path / "a" / "results.json").exists(), r
    assert "patch: target: 'eleven' is neither a class name nor an index below 10" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    with pytest.raises(ValueError, match="'12' is neither"):
        probe(target="12").check(digits_model)
    r = audit(
        "run",
        "--model",
        "shapes-unet",
        "--limit",
        "4",
        "--probes",
        "patch",
        "--set",
        "patch.target=1",
        "--out",
        tmp_path / "b",
    )
    assert r.code == 2 and "targeted patches are for classifiers" in r.err, r
    for bad in (
        {"scales": "0.2,1.5"},
        {"score_scale": "0"},
        {"held_out": "1"},
        {"lr": "0"},
        {"steps": "-1"},
        {"scalez": "0.1"},
    ):
        with pytest.raises(AuditError):
            parse_params(PatchProbe, bad)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["shapes-yolov8n", "shapes-unet"])
def test_detector_and_segmenter_patches_produce_their_metrics(audit, tmp_path, model):
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        model,
        "--limit",
        "6",
        "--probes",
        "patch",
        "--set",
        "patch.scales=0.05,0.2",
        "--set",
        "patch.score_scale=0.2",
        "--out",
        out,
        *FAST,
    )
    assert r.code == 0, r
    res = read_results(out)["probes"]["patch"]
    assert res["status"] == "ok", res
    m, d = res["metrics"], res["details"]
    kind = "recall" if model == "shapes-yolov8n" else "miou"
    assert 0 < m[f"clean_{kind}"] <= 1
    for s in ("0.05", "0.2"):
        assert 0 <= m[f"patched_{kind}@scale={s}"] <= 1 and 0 <= m[f"success_rate@scale={s}"] <= 1
        assert m[f"{kind}_drop@scale={s}"] == pytest.approx(
            (m[f"clean_{kind}"] if kind == "recall" else d["rows"][["0.05", "0.2"].index(s)][2])
            - m[f"patched_{kind}@scale={s}"]
        )
    assert res["score"] == pytest.approx(1 - m["success_rate@scale=0.2"])
    assert d["train_images"] == d["held_out_images"] == 3 and d["target"] is None
    for rel in res["artifacts"]:
        assert (out / rel).is_file()


def test_detector_images_without_objects_get_no_patch_and_keep_their_place(tmp_path):
    """Images without objects sit among the others: placements must stay aligned with the images they belong to."""
    from auditor.data import load_data
    from auditor.probes.patch.goals import DetectGoal

    model = load_model(ModelSpec(model="shapes-yolov8n")).eval()
    data = load_data(model, None, limit=8, seed=0)
    empty = [0, 3, 5]
    data.labels = [torch.zeros(0, 5) if i in empty else t for i, t in enumerate(data.labels)]
    ctx = probe_context("patch", model, tmp_path, data=data, batch_size=3)
    result = probe(scales="0.2", score_scale=0.2, steps=2, gallery=2, held_out=0.5).run(ctx)
    objects = sum(len(t) for i, t in enumerate(data.labels) if i in split(8, 0.5)[1].tolist())
    assert result.details["rows"][0][2] == pytest.approx(result.metrics["clean_recall"]) and objects > 0
    # every copy of the patch lands on an object of its own image
    goal = DetectGoal.from_data(ctx, torch.arange(8))
    generator = torch.Generator().manual_seed(0)
    for image, where in zip(
        range(8),
        zip(
            *[
                [w.take(torch.tensor([i])) for i in range(8)]
                for w in goal.place(torch.arange(8), 0.2, generator, train=False)
            ]
        ),
    ):
        _, cover = patched(goal.pixels([image]), torch.ones(3, 4, 4), list(where))
        if image in empty:
            assert cover.sum() == 0
        else:
            box = goal.boxes[image, 0].round().long()
            assert cover[0, 0, box[1] : box[3], box[0] : box[2]].sum() > 0


def test_gradcam_maps_join_the_examples_only_when_gradcam_runs(audit, tmp_path):
    args = [
        "run",
        "--model",
        "digits-cnn",
        "--limit",
        "24",
        "--set",
        "patch.scales=0.2",
        "--set",
        "patch.score_scale=0.2",
        "--set",
        "gradcam.images=2",
        "--set",
        "gradcam.steps=2",
        "--set",
        "gradcam.stages=1",
        *FAST,
    ]
    assert audit(*args, "--probes", "patch,gradcam", "--out", tmp_path / "with").code == 0
    assert audit(*args, "--probes", "patch", "--out", tmp_path / "without").code == 0
    with_cam = read_results(tmp_path / "with")["probes"]["patch"]
    without = read_results(tmp_path / "without")["probes"]["patch"]
    assert with_cam["details"]["gradcam"] is True and without["details"]["gradcam"] is False
    assert "Grad-CAM" in with_cam["details"]["captions"]["patch/examples.png"]
    assert with_cam["metrics"] == without["metrics"]


def test_paste_covers_the_requested_area_and_keeps_the_patch():
    x = torch.zeros(2, 3, 40, 40)
    patch = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(0))
    where = Placement(
        centre=torch.tensor([[20.0, 20.0], [12.0, 25.0]]),
        side=torch.tensor([10.0, 10.0]),
        angle=torch.tensor([0.0, math.radians(30)]),
        extent=tile_extent(10),
    )
    out, cover = paste(x, patch, where)
    torch.testing.assert_close(out[0, :, 15:25, 15:25], patch)  # axis-aligned on the pixel grid: the patch itself
    assert cover[0].sum() == pytest.approx(100, abs=1e-3) and cover[0, 0, :14].sum() < 1e-4
    assert cover[1].sum() == pytest.approx(100, rel=0.03)  # rotated: the same area, up to bilinear edges
    assert out.min() >= 0 and out.max() <= 1
    hidden = paste(
        x, patch, Placement(where.centre, where.side, where.angle, where.extent, on=torch.tensor([True, False]))
    )[1]
    assert hidden[1].sum() == 0 and hidden[0].sum() == pytest.approx(100, abs=1e-3)
    # a copy half outside the image: what falls outside is dropped, nothing wraps to the other side
    edge = Placement(torch.tensor([[1.0, 20.0]]), torch.tensor([10.0]), torch.tensor([0.3]), tile_extent(10))
    _, cover = paste(torch.zeros(1, 1, 40, 40), patch[:1], edge)
    assert 40 < cover.sum() < 90 and cover[0, 0, :, 10:].sum() == 0  # the right-hand columns stay untouched


def test_tile_paste_equals_a_whole_image_grid_sample():
    """The tile shortcut gives what sampling the patch over the whole image gives, values and gradients."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 32, 40, generator=g)
    patch = torch.rand(3, 7, 7, generator=g).requires_grad_(True)
    centre, side, angle = (
        torch.tensor([[9.3, 11.7], [30.2, 20.5], [2.0, 30.0]]),
        torch.tensor([7.5, 9.0, 8.0]),
        torch.tensor([0.2, -0.35, 0.1]),
    )
    out, cover = paste(x, patch, Placement(centre, side, angle, tile_extent(9.0)))
    # the same map, written for the whole image at once
    n, _, h, w = x.shape
    cos, sin, k = angle.cos(), angle.sin(), 2 / side
    dx, dy = w / 2 - centre[:, 0], h / 2 - centre[:, 1]
    theta = torch.stack(
        [
            torch.stack([k * cos * w / 2, k * sin * h / 2, k * (cos * dx + sin * dy)], 1),
            torch.stack([-k * sin * w / 2, k * cos * h / 2, k * (cos * dy - sin * dx)], 1),
        ],
        1,
    )
    grid = torch.nn.functional.affine_grid(theta, [n, 1, h, w], align_corners=False)
    sampled = torch.nn.functional.grid_sample(
        torch.cat([patch, torch.ones(1, 7, 7)]).expand(n, -1, -1, -1), grid, align_corners=False
    )
    expected = x * (1 - sampled[:, -1:]) + sampled[:, :-1]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cover, sampled[:, -1:], rtol=1e-4, atol=1e-5)
    (grad,) = torch.autograd.grad(out.square().sum(), patch)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), patch)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
