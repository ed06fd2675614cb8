"""The gradcam probe: maps that agree with their definitions and with captum, and checks that catch bad maps."""

from __future__ import annotations

import pytest
import torch

from auditor.cam import cam_maps, class_activation_maps, gap_linear_head
from auditor.models import ModelSpec, load_model
from auditor.probes.gradcam import GradCamProbe
from auditor.probes.gradcam.faithfulness import auc, deletion_insertion
from auditor.probes.gradcam.localisation import energy_in_object, pointing_hits
from auditor.probes.gradcam.sanity import rank_correlation
from tests.conftest import make_probe, probe_context, read_results

SMALL = ["--set", "gradcam.images=2", "--set", "gradcam.steps=3", "--set", "gradcam.stages=2"]


def run_probe(model, pixels, labels, tmp_path, **params):
    return make_probe(GradCamProbe, **params).run(probe_context("gradcam", model, tmp_path, pixels, labels))


def test_cam_equals_gradcam_on_a_gap_network(digits_model, digits_test):
    """On GAP + linear, d logit_c / d A_k(i,j) = w_ck / HW: Grad-CAM is CAM divided by the map's area."""
    x, _ = digits_test[0][:8].float(), None
    x = x / 255 if digits_test[0].dtype == torch.uint8 else x
    ((_, layer),) = digits_model.cam_layers
    head = gap_linear_head(digits_model.net, layer, digits_model.example_input(2), digits_model)
    assert head is digits_model.net.classifier
    classes = digits_model(x).argmax(1)
    cam = class_activation_maps(head, layer, x, classes, digits_model)
    grad = cam_maps(lambda b: digits_model(b)[torch.arange(len(b)), classes], [layer], x, ["gradcam"])["gradcam"]
    h, w = cam.shape[-2:]
    assert cam.max() > 0
    torch.testing.assert_close(grad * h * w, cam, rtol=1e-4, atol=1e-5)


def test_batched_gradcam_matches_captum_one_image_at_a_time(digits_model, digits_test):
    from captum.attr import LayerGradCam

    x = digits_test[0][:6].float()
    x = x / 255 if digits_test[0].dtype == torch.uint8 else x
    ((_, layer),) = digits_model.cam_layers
    targets = torch.tensor([0, 1, 2, 3, 4, 5])  # not only the predicted class
    batched = cam_maps(lambda b: digits_model(b)[torch.arange(len(b)), targets], [layer], x, ["gradcam"])["gradcam"]
    captum = LayerGradCam(digits_model, layer)
    for i in range(len(x)):
        one = captum.attribute(x[i : i + 1], target=int(targets[i]), relu_attributions=True)[0, 0]
        torch.testing.assert_close(batched[i], one, rtol=1e-4, atol=1e-6)


def test_one_forward_and_one_backward_per_batch(digits_model, digits_test):
    x = digits_test[0][:20].float()
    x = x / 255 if digits_test[0].dtype == torch.uint8 else x
    ((_, layer),) = digits_model.cam_layers
    calls = []
    handle = digits_model.net.register_forward_hook(lambda *a: calls.append(1))
    try:
        maps = cam_maps(lambda b: digits_model(b)[:, 3], [layer], x, ["gradcam", "gradcam++"])
    finally:
        handle.remove()
    assert len(calls) == 1 and maps["gradcam"].shape == maps["gradcam++"].shape == (20, 7, 7)


def test_digits_maps_beat_random_and_depend_on_the_weights(digits_model, digits_test, tmp_path):
    images, labels = digits_test[0][:48], digits_test[1][:48]
    result = run_probe(digits_model, images, labels, tmp_path, images=24, stages=3)
    m = result.metrics
    assert m["insertion_auc"] > m["insertion_auc@random"] + 0.1
    assert m["deletion_auc"] < m["deletion_auc@random"] - 0.05
    # ROAD too: with the removed pixels imputed, removing Grad-CAM's top pixels first still destroys the score
    # much faster than a random order does (0.25 vs 0.51 on 32 rows), and removing its least relevant first
    # keeps it longer (0.68 vs 0.56)
    assert m["road_morf_auc"] < m["road_morf_auc@random"] - 0.1
    assert m["road_lerf_auc"] > m["road_lerf_auc@random"] + 0.05
    assert any(f.text.startswith("ROAD agrees") for f in result.findings)
    assert m["randomization_similarity"] < 0.3 and m["untrustworthy"] == 0.0
    assert m["shortcut_classes"] == 0.0  # the digits are centred: every class looks at the centre
    assert abs(m["insertion_auc@cam"] - m["insertion_auc@gradcam"]) < 0.01  # same map up to scale
    for name in ("methods.png", "gallery.png", "classes.png", "faithfulness.png", "randomisation.png"):
        assert (tmp_path / "gradcam" / name).stat().st_size > 1000
    # The report reads these details, and those of runs saved before ROAD and the shortcut check.
    view = GradCamProbe.view(result.details)
    assert view.road and view.maps[1].road is not None and view.maps[0].road is None  # CAM, then Grad-CAM
    assert view.shortcut_classes and not any(c.flagged for c in view.shortcut_classes)
    old = {k: v for k, v in result.details.items() if k not in ("road", "shortcuts")}
    old_view = GradCamProbe.view(old)
    assert not old_view.road and old_view.shortcut_classes == [] and old_view.maps[1].deletion == m["deletion_auc"]


def test_a_network_with_frozen_random_weights_is_flagged(digits_test, tmp_path):
    """An untrained network's class scores do not depend on where the evidence is: no map beats chance."""
    from zoo.digits_cnn import DigitsCNN

    model = load_model(ModelSpec(model="digits-cnn")).eval()
    torch.manual_seed(0)
    model.net = DigitsCNN().eval().requires_grad_(False)
    result = run_probe(model, digits_test[0][:24], digits_test[1][:24], tmp_path, images=16, stages=2)
    assert result.metrics["untrustworthy"] == 1.0
    assert any(f.severity == "high" and "no better than a random map" in f.text for f in result.findings)


def test_maps_that_survive_randomisation_are_flagged(digits_model, digits_test, tmp_path, monkeypatch):
    """If re-initialising the layers left the maps as they were, the check must say so."""
    monkeypatch.setattr("auditor.probes.gradcam.sanity.randomise", lambda module, seed: None)
    result = run_probe(digits_model, digits_test[0][:24], digits_test[1][:24], tmp_path, images=12, stages=2)
    assert result.metrics["randomization_similarity"] > 0.99 and result.metrics["untrustworthy"] == 1.0
    assert any(f.severity == "high" and "barely change" in f.text for f in result.findings)


def test_deletion_and_insertion_follow_the_map():
    """Score = mean brightness: removing the brightest pixels first must beat removing the darkest first."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    curves = deletion_insertion(
        lambda b, rows: b.flatten(1).mean(1),
        x,
        {"right": x[:, 0], "wrong": 1 - x[:, 0]},
        steps=8,
        generator=g,
        batch_size=4,
    )
    assert curves["right"]["deletion"].shape == (3, 9)
    assert (auc(curves["right"]["deletion"]) < auc(curves["wrong"]["deletion"])).all()
    torch.testing.assert_close(curves["right"]["deletion"][:, -1], torch.zeros(3))  # all pixels black at the end
    torch.testing.assert_close(curves["right"]["insertion"][:, -1], x.flatten(1).mean(1))  # the image again


def test_noisy_linear_imputation_fills_a_hole_from_its_surroundings():
    """ROAD's imputation: each removed pixel the weighted mean of its neighbours, checked against SciPy's direct
    solve of the same system, close to the truth in a smooth image, and the noise on the removed pixels only."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    from auditor.probes.gradcam.road import NOISE, linear_imputation, noisy_linear_imputation

    ys, xs = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    smooth = (0.5 + 0.3 * torch.sin(2 * ys + 1) * torch.cos(3 * xs)).expand(2, 3, 48, 48).clone()
    removed = torch.zeros(2, 1, 48, 48, dtype=torch.bool)
    removed[0, :, 10:30, 14:40] = True  # a big hole
    removed[1] = torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(0)) < 0.7  # most pixels, scattered
    filled = linear_imputation(smooth, removed)
    hole = removed.expand_as(smooth)
    assert torch.equal(filled[~hole], smooth[~hole])  # kept pixels untouched
    assert (filled - smooth).abs().max() < 0.03  # the smooth surface comes back
    # the same system solved directly: sum over neighbours q of w_pq (x_q - x_p) = 0 at every removed p
    grey, gap = smooth[1, 0].double().numpy(), removed[1, 0].numpy()
    where = -torch.ones(48, 48, dtype=torch.long).numpy()
    points = list(zip(*gap.nonzero()))
    for k, (y, x) in enumerate(points):
        where[y, x] = k
    a, b = lil_matrix((len(points), len(points))), [0.0] * len(points)
    for k, (y, x) in enumerate(points):
        for dy, dx in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]:
            weight, (v, u) = (1 / 12 if dy and dx else 1 / 6), (y + dy, x + dx)
            if 0 <= v < 48 and 0 <= u < 48:
                a[k, k] += weight
                if gap[v, u]:
                    a[k, where[v, u]] -= weight
                else:
                    b[k] += weight * grey[v, u]
    exact = torch.from_numpy(spsolve(a.tocsc(), b)).float()
    assert (filled[1, 0][removed[1, 0]] - exact).abs().max() < 2e-3
    noisy = noisy_linear_imputation(smooth, removed, torch.Generator().manual_seed(1))
    assert torch.equal(noisy[~hole], smooth[~hole])
    assert abs((noisy - filled)[hole].std().item() - NOISE) < 0.002
    everything = noisy_linear_imputation(smooth, torch.ones_like(removed), torch.Generator().manual_seed(1))
    assert everything.abs().max() < 6 * NOISE  # nothing left to impute from: the noise alone


def test_road_removes_in_the_map_order():
    """Score = mean brightness: removing (and imputing) the brightest pixels first lowers it, the darkest raises it."""
    from auditor.probes.gradcam.faithfulness import pixel_order
    from auditor.probes.gradcam.road import road_curves

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    ranks = {"bright": pixel_order(x[:, 0], g), "dark": pixel_order(1 - x[:, 0], g)}
    curves = road_curves(lambda b, rows: b.flatten(1).mean(1), x, ranks, steps=4, generator=g, batch_size=7)
    assert curves["bright"]["morf"].shape == (3, 5)
    torch.testing.assert_close(curves["bright"]["morf"][:, 0], x.flatten(1).mean(1))  # nothing removed yet
    assert (auc(curves["bright"]["morf"]) < auc(curves["dark"]["morf"])).all()
    assert (auc(curves["bright"]["lerf"]) > auc(curves["bright"]["morf"])).all()
    torch.testing.assert_close(curves["bright"]["lerf"], curves["dark"]["morf"], atol=0.01, rtol=0)


def test_localisation_and_rank_correlation_helpers():
    maps = torch.zeros(2, 10, 10)
    maps[0, 2, 2] = 1.0  # inside the object
    maps[1, 8, 8] = 1.0  # 3 px from it
    objects = torch.zeros(2, 10, 10, dtype=torch.bool)
    objects[:, 1:4, 1:4] = True
    assert energy_in_object(maps, objects).tolist() == [1.0, 0.0]
    assert pointing_hits(maps, objects, 0).tolist() == [True, False]
    assert pointing_hits(maps, objects, 5).tolist() == [True, True]
    a = torch.rand(3, 5, 5)
    rho = rank_correlation(a, 2 * a + 1)
    assert torch.allclose(rho, torch.ones(3, dtype=torch.float64))
    assert torch.isnan(rank_correlation(torch.zeros(1, 5, 5), a[:1])).all()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["shapes-unet", "shapes-yolov8n"])
def test_segmenter_and_detector_rows_each_get_their_own_map(audit, tmp_path, model):
    out = tmp_path / "out"
    r = audit("run", "--model", model, "--limit", "4", "--probes", "gradcam", "--out", out, *SMALL)
    assert r.code == 0, r
    probe = read_results(out)["probes"]["gradcam"]
    assert probe["status"] == "ok", probe
    m, d = probe["metrics"], probe["details"]
    assert d["rows"] >= 2 and len(d["layers"]) == (3 if model == "shapes-yolov8n" else 1)
    assert 0 <= m["energy_in_object"] <= 1 and 0 <= m["pointing_game"] <= 1
    assert "head" not in d["layers"]  # a segmenter's maps come from before its logits layer
    for name in ("methods.png", "gallery.png", "faithfulness.png", "randomisation.png"):
        assert (out / "gradcam" / name).is_file()


def test_every_row_of_a_segmentation_batch_gets_a_map(tmp_path):
    """The trap of batched segmentation CAMs: only the first image's map is non-zero."""
    from auditor.targets import target_scores
    from auditor.tasks import task_of

    model = load_model(ModelSpec(model="shapes-unet")).eval()
    from zoo import shapes

    x = (
        torch.stack(
            [
                torch.from_numpy(shapes.render(shapes.scene_seed("test", i)).image.copy()).permute(2, 0, 1)
                for i in range(3)
            ]
        ).float()
        / 255
    )
    t = task_of(model).explain_targets(model, x, None, cap=12, batch_size=8)
    assert len(set(t.image.tolist())) == 3
    ((_, layer),) = model.cam_layers
    maps = cam_maps(lambda b: target_scores(model, b, t), [layer], x[t.image], ["gradcam"])["gradcam"]
    assert (maps.flatten(1).amax(1) > 0).all()


def test_bad_gradcam_params_are_usage_errors(audit, tmp_path):
    r = audit("run", "--probes", "gradcam", "--set", "gradcam.layer=featurs", "--out", tmp_path / "o")
    assert r.code == 2 and "did you mean features" in r.err, r
    r = audit("run", "--probes", "gradcam", "--set", "gradcam.methods=gradcamm", "--out", tmp_path / "o")
    assert r.code == 2 and "gradcam" in r.err, r


def test_label_free_folder_and_a_chosen_layer(audit, tmp_path, digits_flat):
    """Without labels only the predicted class is explained; --set gradcam.layer picks the layer."""
    out = tmp_path / "out"
    r = audit(
        "run", "--data", digits_flat, "--probes", "gradcam", "--set", "gradcam.layer=features.2", "--out", out, *SMALL
    )
    assert r.code == 0, r
    probe = read_results(out)["probes"]["gradcam"]
    assert probe["details"]["layers"] == ["features.2"] and "energy_in_object" not in probe["metrics"]
    assert "cam" not in probe["details"]["aucs"] and "cam" not in probe["details"]["methods"]  # GAP reads `features`


def test_border_attention_flags_classes_whose_maps_sit_on_the_frame():
    from auditor.probes.gradcam.localisation import border_attention, border_findings

    maps = torch.zeros(8, 20, 20)
    maps[:4, 0:2, :] = 1.0  # class 0: all mass on the top two rows (inside the 10% band)
    maps[4:, 8:12, 8:12] = 1.0  # class 1: a blob in the middle
    classes = torch.tensor([0] * 4 + [1] * 4)
    border = border_attention(maps, classes, ["<frame>", "centre"])
    assert border.area == pytest.approx(1 - 0.8**2)
    assert [r.name for r in border.classes] == ["<frame>", "centre"]
    assert border.classes[0].border_energy == pytest.approx(1.0) and border.classes[1].border_energy == 0
    (finding,) = border_findings(border, "gradcam")
    assert finding.severity == "medium" and finding.key and "'<frame>' 100% (4 maps)" in finding.text
    centred = border_attention(maps[4:], classes[4:], ["<frame>", "centre"])
    (finding,) = border_findings(centred, "gradcam")
    assert finding.severity == "info" and "0% of the Grad-CAM mass" in finding.text


def test_a_class_whose_maps_keep_to_a_corner_of_its_own_is_a_location_shortcut():
    from auditor.probes.gradcam.shortcut import location_shortcuts, shortcut_findings

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(12, 28, 28, generator=g) * 0.1  # a little mass everywhere
    maps[:4, 21:28, 21:28] += 1.0  # class 0: a patch at the bottom-right corner
    maps[4:, 10:18, 10:18] += 1.0  # classes 1 and 2: the centre, as every centred object set
    classes = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    found = location_shortcuts(maps, classes, ["tagged", "a", "b"])
    (flagged,) = found.flagged
    assert flagged.name == "tagged" and flagged.place == "bottom-right corner" and flagged.box == (21, 21, 28, 28)
    assert flagged.concentrated == 1.0 and flagged.contrast > 6
    assert not any(s.flagged for s in found.classes[1:])  # the centre is everyone's: no class's own
    finding = shortcut_findings(found, "gradcam")[0]
    assert finding.severity == "high" and "'tagged'" in finding.text and "bottom-right corner" in finding.text
    assert "pixels x 21-27, y 21-27 of 28x28" in finding.text
    # With ground truth: a place the class's objects cover is the object, not a shortcut.
    objects = torch.zeros(12, 28, 28, dtype=torch.bool)
    objects[:4, 18:28, 18:28] = True
    known = torch.tensor([True] * 4 + [False] * 8)
    on_object = location_shortcuts(maps, classes, ["tagged", "a", "b"], objects, known)
    assert not on_object.flagged and on_object.classes[0].on_object == pytest.approx(1.0)
    objects[:4] = False
    objects[:4, :5, :5] = True  # the class's objects elsewhere: the corner is off them
    off_object = location_shortcuts(maps, classes, ["tagged", "a", "b"], objects, known)
    assert off_object.flagged and off_object.classes[0].on_object < 0.01
    assert "0% of the mass there lies on the class's objects" in shortcut_findings(off_object, "gradcam")[0].text
    # Alone, a class cannot be told from the data's layout (nor with too few maps).
    assert not location_shortcuts(maps[:4], classes[:4], ["tagged"]).flagged
    assert location_shortcuts(maps[:2], classes[:2], ["tagged"]).classes == []
    assert (
        shortcut_findings(location_shortcuts(maps[4:], classes[4:], ["tagged", "a", "b"]), "gradcam")[0].severity
        == "info"
    )


@pytest.mark.slow
def test_a_planted_corner_mark_is_flagged_and_the_same_net_without_it_is_not(tmp_path):
    """End to end on a tiny CNN trained (about a second each) to read a mark at the top-left corner of every '7'."""
    from tests.planted_shortcut import MARK_CLASS, MARK_PLACE, adapter_of, planted, reliance

    for mark in (True, False):
        p = planted(mark=mark)
        marked, unmarked = reliance(p.net, p.images, p.labels)
        if mark:  # the net reads the mark: the class is lost without it
            assert marked > 0.9 and unmarked < 0.2, (marked, unmarked)
        # 40 images, 10 of them of the marked class, so that the class has maps enough
        mine = torch.nonzero(p.labels == MARK_CLASS).flatten()[:10]
        rest = torch.nonzero(p.labels != MARK_CLASS).flatten()[:30]
        pick = torch.cat([mine, rest])
        result = run_probe(
            adapter_of(p.net),
            p.images[pick],
            p.labels[pick],
            tmp_path / str(mark),
            images=40,
            steps=3,
            stages=1,
            methods="gradcam",
            faithful_rows=8,
        )
        high = [f.text for f in result.findings if f.severity == "high" and "location shortcut" in f.text]
        if mark:
            assert result.metrics["shortcut_classes"] == 1.0 and len(high) == 1, result.findings
            assert f"class '{MARK_CLASS}'" in high[0] and MARK_PLACE in high[0]
            assert (tmp_path / str(mark) / "gradcam" / "classes.png").stat().st_size > 1000
        else:
            assert result.metrics["shortcut_classes"] == 0.0 and not high, result.findings


def test_all_zero_maps_have_no_border_share():
    """A saturated score gives all-zero maps: nothing lies in the border, and nothing is said about it."""
    from auditor.probes.gradcam.localisation import border_attention, border_findings

    border = border_attention(torch.zeros(4, 16, 16), torch.tensor([0, 0, 1, 1]), ["a", "b"])
    assert border.mean is None and border.classes == [] and border_findings(border, "gradcam") == []
