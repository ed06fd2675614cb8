"""ultralytics -seg models: instance masks decoded, scored (mask mAP50 beside box mAP50) and explained per instance.

The model is yolov8n-seg built from ultralytics' YAML. Random weights find nothing at the shown confidence (every
class probability stays near its initial bias, 0.004), so the fixture loads the zoo's shapes-yolov8n detector
into the shared layers (backbone, neck, box and class branches; state dict with strict=False): its boxes are
real, and its mask branch (prototypes, coefficients) stays random, so the masks are input-dependent noise inside
each box. That is enough to test the plumbing; nothing here judges mask quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auditor.data import EvalData
from auditor.models import ModelSpec, load_model
from auditor.models.base import ModelFacts, Preprocess
from auditor.models.ultralytics_seg import InstanceAdapter
from auditor.probes.attacks.probe import AttacksProbe
from auditor.probes.augment.probe import AugmentProbe
from auditor.probes.gradcam.probe import GradCamProbe
from auditor.targets import target_scores
from auditor.tasks import InstanceDetect, Instances, task_of
from tests.conftest import make_probe, probe_context, read_results
from zoo import shapes
from zoo.registry import get_entry

SIZE = 64


@pytest.fixture(scope="module")
def classes3(tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "classes.txt"
    path.write_text("circle\nsquare\ntriangle\n")
    return path


@pytest.fixture(scope="module")
def seg_model(classes3):
    """yolov8n-seg from its YAML, with the zoo detector's weights in the layers the two share."""
    adapter = load_model(ModelSpec(model="yolov8n-seg.yaml", classes_file=str(classes3), input_size=(SIZE, SIZE)))
    state = torch.load(get_entry("shapes-yolov8n").checkpoint_path, map_location="cpu", weights_only=True)
    missing = adapter.net.load_state_dict(state, strict=False).missing_keys
    assert missing and all(".cv4." in k or ".proto." in k for k in missing)  # the mask branch alone stays random
    return adapter.eval()


@pytest.fixture(scope="module")
def scenes():
    """Four label-free shapes scenes at the model's size."""
    images = torch.stack(
        [
            torch.from_numpy(np.array(shapes.render(shapes.scene_seed("val", i), SIZE).image)).permute(2, 0, 1)
            for i in range(4)
        ]
    )
    return EvalData(
        name="scenes", images=images, labels=[torch.zeros(0, 5)] * 4, labelled=False, source="flat", total=4
    )


def _toy_outputs():
    """A -seg head's eval output for one 32 x 32 image: two candidates, four-times-coarser prototypes.
    Candidate 0: box x 0..16 (the left half), coefficients (1, 0); candidate 1: box x 16..32, coefficients (0, 1).
    Prototype 0 is +1 on the top half and -1 below; prototype 1 is +1 everywhere."""
    boxes = torch.tensor([[8.0, 16.0, 16.0, 32.0], [24.0, 16.0, 16.0, 32.0]]).T  # cx cy w h x 2 candidates
    scores = torch.tensor([[0.9, 0.8]])
    coefficients = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T  # 2 coefficients x 2 candidates
    decoded = torch.cat([boxes, scores, coefficients])[None]  # 1 x (4 + 1 class + 2) x 2
    protos = torch.ones(1, 2, 8, 8)
    protos[0, 0, 4:] = -1
    return (decoded, protos), {}


def test_instance_masks_are_prototypes_times_coefficients_cropped_to_the_box():
    adapter = InstanceAdapter(
        nn.Identity(),
        facts=ModelFacts(name="toy", source="test"),
        class_names=["thing"],
        input_size=(32, 32),
        channels=3,
        mean=(0.0,),
        std=(1.0,),
        preprocess=Preprocess(resize=(32, 32)),
        epsilons=(),
    )
    ((d, anchors),) = adapter.detect_with_anchors(_toy_outputs())
    assert anchors.tolist() == [0, 1] and d["masks"].shape == (2, 8, 8) and d["masks"].dtype == torch.bool
    top_left = torch.zeros(8, 8, dtype=torch.bool)
    top_left[:4, :4] = True
    right = torch.zeros(8, 8, dtype=torch.bool)
    right[:, 4:] = True
    assert torch.equal(d["masks"][0], top_left) and torch.equal(d["masks"][1], right)
    # at the input size (what gradcam explains and draws): upsampled logits, thresholded, cropped
    full = adapter.input_masks(_toy_outputs(), torch.tensor([0, 0]), anchors, d["boxes"])
    assert full.shape == (2, 32, 32)
    assert full[0, :14, :16].all() and not full[0, 18:].any() and not full[0, :, 16:].any()
    assert full[1, :, 16:].all() and not full[1, :, :16].any()
    # an instance's score: its mask logits summed over the mask (1 on each of the 16 x 16 top-left pixels)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, :16, :16] = True
    score = adapter.instance_scores(_toy_outputs(), anchors[:1], mask)
    logits = adapter.mask_logits(_toy_outputs(), torch.tensor([0]), anchors[:1])
    assert score.item() == pytest.approx(logits[0, :16, :16].sum().item())


def test_mask_map50_is_one_for_the_reference_and_falls_when_masks_move():
    task = InstanceDetect()
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:7, 2:7] = True
    masks[1, 9:14, 8:14] = True
    pred = [
        {
            "boxes": torch.tensor([[8.0, 8, 28, 28], [32, 36, 56, 56]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 2]),
            "masks": masks,
        }
    ]
    reference = task.as_reference(pred)
    assert isinstance(reference, Instances) and torch.equal(reference.masks[0], masks)
    assert task.scores(pred, reference, None) == {"map50": pytest.approx(1.0), "mask_map50": pytest.approx(1.0)}
    moved = [{**pred[0], "masks": torch.roll(masks, 4, dims=2)}]  # same boxes, masks 4 cells to the right
    got = task.scores(moved, reference, None)
    assert got["map50"] == pytest.approx(1.0) and got["mask_map50"] < 0.5


def test_yolo_seg_polygons_give_boxes_and_instance_masks(tmp_path):
    from auditor.yolo_labels import read_yolo_labels

    (tmp_path / "a.txt").write_text("1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")  # a square, as a polygon
    boxes, masks = read_yolo_labels(tmp_path / "a.txt", (64, 64))
    assert boxes.tolist() == [[1.0, 16.0, 16.0, 48.0, 48.0]]
    square = torch.zeros(16, 16, dtype=torch.bool)
    square[4:12, 4:12] = True
    assert masks.shape == (1, 16, 16) and torch.equal(masks[0], square)  # a quarter of the input, ultralytics'
    (tmp_path / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.3 0.1 0.3 0.3\n")  # a box beside a polygon
    boxes, masks = read_yolo_labels(tmp_path / "b.txt", (64, 64))
    assert boxes.shape == (2, 5) and masks is None  # masks only where every object has one


def test_polygon_labels_score_masks_against_ground_truth(seg_model, scenes, tmp_path):
    """images/ + labels/ with YOLO-seg polygons: labelled data whose reference has masks (clean_mask_map50)."""
    from auditor.data import load_data

    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    for i in range(3):
        scene = shapes.render(shapes.scene_seed("val", i), SIZE)
        Image.fromarray(scene.image).save(tmp_path / "set" / "images" / f"{i}.png")
        rows = [  # each object's box as a four-point polygon
            f"{c} " + " ".join(f"{v / SIZE:.5f}" for v in (x0, y0, x1, y0, x1, y1, x0, y1))
            for (x0, y0, x1, y1), c in zip(scene.boxes.tolist(), scene.classes.tolist())
        ]
        (tmp_path / "set" / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    data = load_data(seg_model, str(tmp_path / "set"), limit=None, seed=0)
    assert data.labelled and isinstance(data.labels, Instances)
    assert [len(m) for m in data.labels.masks] == [len(b) for b in data.labels]
    augment = make_probe(AugmentProbe, shifts="translate", severities="1")
    res = augment.run(probe_context("augment", seg_model, tmp_path, data=data, batch_size=4))
    assert 0 <= res.metrics["clean_mask_map50"] <= 1 and 0 <= res.metrics["mask_map50@translate:1"] <= 1


def test_seg_model_gets_mask_scores_in_attacks_and_augment(seg_model, scenes, tmp_path):
    task = task_of(seg_model)
    assert isinstance(task, InstanceDetect)
    with torch.no_grad():
        pred = task.predict(seg_model, scenes.images_at(slice(0, 4)))
    assert all(d["masks"].shape[1:] == (SIZE // 4, SIZE // 4) for d in pred)
    assert sum(len(r) for r in task.as_reference(pred)) > 0  # the shared detector layers find the shapes

    attacks = make_probe(
        AttacksProbe,
        eps="8/255",
        steps=2,
        gallery=1,
        min_eps_images=2,
        bisect=1,
        check_images=0,
        square_queries=5,
        masked_queries=5,
    )
    res = attacks.run(probe_context("attacks", seg_model, tmp_path, data=scenes, batch_size=4))
    m = res.metrics
    assert 0 <= m["robust_mask_map50@linf=8/255"] <= 1 and "robust_map50@linf=8/255" in m
    assert res.details["side_labels"] == {"mask_map50": "mask mAP50 against the clean prediction"}
    assert AttacksProbe.view(res.details).rows[0].side == {"mask_map50": m["robust_mask_map50@linf=8/255"]}

    augment = make_probe(AugmentProbe, shifts="translate", severities="1")
    res = augment.run(probe_context("augment", seg_model, tmp_path, data=scenes, batch_size=4))
    assert 0 <= res.metrics["mask_map50@translate:1"] <= 1
    assert AugmentProbe.view(res.details).rows[0].cells[0].side["mask_map50"] == res.metrics["mask_map50@translate:1"]


def test_seg_model_gradcam_explains_each_instance_mask(seg_model, scenes, tmp_path):
    x = scenes.images_at(slice(0, 4))
    task = task_of(seg_model)
    t = task.explain_targets(seg_model, x, None, 6, 4)
    assert len(t) > 0 and set(t.role) == {"instance"} and t.mask.shape == (len(t), SIZE, SIZE)
    # each row's mask lies inside its box
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    for r in range(len(t)):
        x0, y0, x1, y1 = t.box[r].tolist()
        inside = (xs >= x0) & (xs < x1 + 1) & (ys >= y0) & (ys < y1 + 1)
        assert not (t.mask[r] & ~inside).any()
    # the score is the instance's mask logits summed over its mask, differentiable in the input
    xr = x[t.image].clone().requires_grad_(True)
    target_scores(seg_model, xr, t).sum().backward()
    assert xr.grad.abs().sum() > 0

    probe = make_probe(GradCamProbe, images=2, steps=3, stages=2, max_targets=4, faithful_rows=2)
    res = probe.run(probe_context("gradcam", seg_model, tmp_path, data=scenes, batch_size=4))
    assert res.status == "ok" and res.details["row_kind"] == "one detected instance"
    assert 0 <= res.metrics["deletion_auc"] <= 1 and (tmp_path / "gradcam" / "gallery.png").is_file()


@pytest.mark.slow
def test_seg_yaml_model_through_the_cli(audit, tmp_path, seg_model, classes3):
    """`audit run --model yolov8n-seg.yaml --weights ...` on label-free images: mask figures in results.json
    and the report."""
    weights = tmp_path / "seg.pt"
    torch.save(seg_model.net.state_dict(), weights)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(shapes.render(shapes.scene_seed("val", i), SIZE).image).save(images / f"{i}.png")
    out = tmp_path / "out"
    fast = ["attacks.steps=2", "attacks.eps=8/255", "attacks.min_eps_images=2", "attacks.check_images=0"]
    fast += ["attacks.square_queries=5", "attacks.masked_queries=5"]
    fast += ["augment.shifts=translate,gaussian_noise", "augment.severities=1", "gradcam.images=2", "gradcam.stages=2"]
    r = audit(
        "run", "--model", "yolov8n-seg.yaml", "--weights", weights, "--classes", classes3, "--input-size", SIZE,
        "--data", images, "--probes", "attacks,augment,gradcam", "--out", out, *[a for s in fast for a in ("--set", s)],
    )  # fmt: skip
    # 2 APGD steps can lose to FGSM: the masking check may then call the attack figures SUSPECT (exit 1)
    assert r.code == 0 or (r.code == 1 and "SUSPECT" in (out / "summary.md").read_text()), r
    res = read_results(out)
    assert "robust_mask_map50@linf=8/255" in res["probes"]["attacks"]["metrics"]
    assert "mask_map50@gaussian_noise:1" in res["probes"]["augment"]["metrics"]
    assert res["probes"]["gradcam"]["details"]["row_kind"] == "one detected instance"
    html = (out / "report.html").read_text()
    assert "worst case: mask mAP50" in html and "mask mAP50 against the clean prediction" in html
