"""torchvision's detectors explained per box: scores traced to their origin, Grad-CAM on the feature pyramid.

The models have random weights (no downloads), made usable in two documented steps:
- a random backbone's fresh batch norms are the identity, and its activations fade to about
  1e-9 by the FPN, so the class scores ignore the image; one train-mode pass over random
  images sets the norms' statistics, as the first steps of training would;
- a random head scores every class alike (about 1 / classes), near the boxes shown at 0.25,
  so the classification layer's bias for one class ("square") is raised: every region then
  scores it about 0.7 (Faster R-CNN) or 0.95 (RetinaNet), and the rest of the score still
  depends on the image.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum._utils.gradient import compute_layer_gradients_and_eval

from auditor.models import ModelSpec, load_model
from auditor.models.base import BOX_TARGETS, ModelFacts, Preprocess
from auditor.models.torchvision_detect import TorchvisionDetectorAdapter, feature_levels
from auditor.probes.gradcam import GradCamProbe
from auditor.targets import best_box_targets, target_scores
from auditor.tasks import task_of
from tests.conftest import make_probe, probe_context, read_results

NAMES = ["__background__", "circle", "square", "triangle"]
SIZE = 128
FASTER = "fasterrcnn_mobilenet_v3_large_320_fpn"


def usable_random(name: str, seed: int = 0, size: int = SIZE, **builder) -> torch.nn.Module:
    """A random-weight detector with class 2 favoured and batch-norm statistics set on random images of `size`
    px (the module docstring): images of another size reach the backbone at another scale, whose statistics
    differ (128 px set, 320 px fed: class 2 scores 1.0, and every Grad-CAM map is zero)."""
    torch.manual_seed(seed)
    net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=len(NAMES), **builder)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0  # the statistics of this one pass
    net.train()
    with torch.no_grad():
        images, _ = net.transform([torch.rand(3, size, size) for _ in range(4)])
        net.backbone(images.tensors)
        if hasattr(net, "roi_heads"):
            net.roi_heads.box_predictor.cls_score.bias[2] += 2.0  # softmax: ~0.7 for class 2
        else:
            net.head.classification_head.cls_logits.bias.view(-1, len(NAMES))[:, 2] = 3.0  # sigmoid: ~0.95
    return net.eval()


@pytest.fixture(scope="module")
def faster_spec(tmp_path_factory) -> ModelSpec:
    """fasterrcnn_mobilenet_v3_large_320_fpn from a state dict on disk, as `--weights` loads it."""
    base = tmp_path_factory.mktemp("tv")
    torch.save(usable_random(FASTER).state_dict(), base / "w.pth")
    (base / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return ModelSpec(
        model=FASTER, weights=str(base / "w.pth"), classes_file=str(base / "classes.txt"), input_size=(SIZE, SIZE)
    )


@pytest.fixture(scope="module")
def faster(faster_spec):
    """As loaded: 128 px images, which the model resizes to its own 320 inside (FPN levels of 10 x 10)."""
    return load_model(faster_spec).eval()


@pytest.fixture(scope="module")
def retinanet():
    """The smallest one-stage family member, resized inside to the input's own 128 px (not 800)."""
    net = usable_random("retinanet_resnet50_fpn", min_size=SIZE, max_size=SIZE)
    return TorchvisionDetectorAdapter(
        net,
        facts=ModelFacts(name="retinanet_resnet50_fpn", source="torchvision"),
        class_names=NAMES,
        input_size=(SIZE, SIZE),
        channels=3,
        mean=(0.0,),
        std=(1.0,),
        preprocess=Preprocess(resize=(SIZE, SIZE)),
        epsilons=(),
    ).eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", ["faster", "retinanet"])
def test_each_box_scores_its_detection_and_its_gradient_sits_on_the_box(which, request):
    """Read back at its origin, each shown box's score is the model's score for it, and the gradient that Grad-CAM
    weighs lies on the box: several times its share of the feature maps (a wrong origin would spread it evenly)."""
    adapter = request.getfixturevalue(which)
    assert adapter.supports(BOX_TARGETS)
    x = images(2)
    t = task_of(adapter).explain_targets(adapter, x, None, 6, 8)
    assert len(t) == 6 and set(t.image.tolist()) == {0, 1}
    with torch.no_grad():
        shown = adapter.predict(x)
    expected = []
    for r in range(len(t)):
        d = shown[int(t.image[r])]
        j = ((d["boxes"] - t.box[r]).abs().sum(1) + 1e6 * (d["labels"] != t.cls[r])).argmin()
        expected.append(d["scores"][j])
    layers = [m for _, m in adapter.cam_layers]
    grads, _ = compute_layer_gradients_and_eval(lambda b: target_scores(adapter, b, t), layers, x[t.image])
    with torch.no_grad():
        scores = target_scores(adapter, x[t.image], t, probability=True)
    torch.testing.assert_close(scores, torch.stack(expected), rtol=0, atol=1e-5)
    ratios = []
    for r in range(len(t)):
        energy = sum(F.interpolate(g[r : r + 1].abs().sum(1, keepdim=True), size=(SIZE, SIZE))[0, 0] for (g,) in grads)
        x0, y0, x1, y1 = t.box[r].round().long().clamp(0, SIZE).tolist()
        inside = energy[y0 : y1 + 1, x0 : x1 + 1]
        ratios.append(float(inside.sum() / energy.sum()) / (inside.numel() / SIZE**2))
    assert min(ratios) > 1.5 and sum(ratios) / len(ratios) > 3, ratios


def test_patch_candidates_hold_each_detection_with_gradients(faster, retinanet):
    """The patch probe's candidates: each shown detection's score is among them, and they reach the input."""
    for adapter in (faster, retinanet):
        x = images(1).requires_grad_(True)
        out = adapter(x)
        boxes, scores = adapter.candidates(out)
        assert boxes.shape[:2] == scores.shape[::2] and scores.shape[1] == len(NAMES)
        assert (
            float(scores[:, 0].abs().max().detach()) == 0 or adapter is retinanet
        )  # a softmax's background is no object
        d = out[0]
        for s, c in zip(d["scores"][d["scores"] >= 0.25], d["labels"][d["scores"] >= 0.25]):
            assert float((scores[0, c] - s).abs().min().detach()) < 1e-5
        (grad,) = torch.autograd.grad(scores.amax(1).sum(), x)
        assert grad.abs().sum() > 0


def test_scores_stay_defined_on_a_changed_image(faster):
    """The two-stage origin is a region, not an index into proposals: a changed image still has a score for it."""
    x = images(2)
    t = best_box_targets(faster, x)
    assert t is not None and t.anchor.shape == (2, 4)  # the proposal boxes the detections came from
    with torch.no_grad():
        clean = target_scores(faster, x, t, probability=True)
        changed = target_scores(faster, x.flip(-1), t, probability=True)
    assert (clean > 0.25).all() and ((changed >= 0) & (changed <= 1)).all() and not torch.allclose(clean, changed)


def test_grad_cam_reads_the_feature_pyramid_not_the_roi_crops(faster, retinanet):
    """FPN levels (1 x 1 ones left out); SSD-VGG's L2-normalised conv4_3 is read at the VGG trunk."""
    assert [n for n, _ in faster.cam_layers] == ["backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1"]
    assert [n for n, _ in retinanet.cam_layers] == [
        "backbone.fpn.layer_blocks.0",
        "backbone.fpn.layer_blocks.1",
        "backbone.fpn.layer_blocks.2",
        "backbone.fpn.extra_blocks.p6",  # 2 x 2 at 128 px; p7 is 1 x 1
    ]
    ssd = torchvision.models.get_model("ssd300_vgg16", weights=None, weights_backbone=None, num_classes=3).eval()
    names = [n for n, _ in feature_levels(ssd, torch.rand(1, 3, 64, 64))]
    assert names == [
        "backbone.features",
        "backbone.extra.0",
        "backbone.extra.1",
        "backbone.extra.2",
        "backbone.extra.3",
    ]


def test_gradcam_probe_explains_each_box(tmp_path):
    """Status ok, one map per detected box, deletion and insertion computed beside the random map. The model
    resizes to 128 inside, not 320 (a sixth of the pixels, for a test of seconds), and its norms are set there."""
    torch.save(usable_random(FASTER, min_size=SIZE, max_size=SIZE).state_dict(), tmp_path / "w.pth")
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    spec = ModelSpec(model=FASTER, weights=str(tmp_path / "w.pth"), classes_file=str(tmp_path / "classes.txt"))
    faster = load_model(dataclasses.replace(spec, input_size=(SIZE, SIZE))).eval()
    faster.net.transform.min_size, faster.net.transform.max_size = (SIZE,), SIZE
    probe = make_probe(GradCamProbe, images=1, max_targets=2, faithful_rows=2, steps=2, stages=1, methods="gradcam")
    result = probe.run(probe_context("gradcam", faster, tmp_path, images(1), [torch.zeros(0, 5)], labelled=False))
    assert result.status == "ok" and result.details["rows"] == 2, result.findings
    for key in ("deletion_auc", "insertion_auc", "deletion_auc@random", "insertion_auc@random"):
        assert math.isfinite(result.metrics[key]) and 0 <= result.metrics[key] <= 1
    assert math.isfinite(result.metrics["border_energy"])  # some map is not all zero (a saturated score gives zeros)
    assert (tmp_path / "gradcam" / "gallery.png").stat().st_size > 1000


def test_randomisation_units_of_torchvision_detectors():
    """The cascade's units: side-by-side one-stage heads together, the backbone block by block, ultralytics as was."""
    from auditor.tasks.detect import Detect

    group = Detect().randomised_group
    assert group("head.regression_head.bbox_reg") == group("head.classification_head.cls_logits") == "head"
    assert group("backbone.body.layer4.0.conv1") == "backbone.body.layer4"
    assert group("roi_heads.box_predictor.cls_score") == "roi_heads.box_predictor"
    assert group("model.22.cv3.0.conv") == "model.22"


@pytest.mark.slow
def test_audit_of_a_torchvision_detector_runs_gradcam_and_patch(audit, faster_spec, tmp_path):
    """What BOX_TARGETS switches on, through the CLI: gradcam's box maps and the patch's detector goal (label-free
    images: the clean detections are the objects to hide, so the patch has something to push down)."""
    from PIL import Image

    for i, x in enumerate(images(4, seed=3)):
        Image.fromarray((x.permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / f"img{i}.png")
    out = tmp_path / "out"
    r = audit(
        *("run", "--model", FASTER, "--weights", faster_spec.weights, "--classes", faster_spec.classes_file),
        *("--input-size", str(SIZE), "--data", tmp_path, "--probes", "gradcam,patch", "--out", out),
        *("--set", "patch.steps=2", "--set", "patch.scales=0.1"),
        *("--set", "gradcam.images=2", "--set", "gradcam.max_targets=2", "--set", "gradcam.steps=2"),
        *("--set", "gradcam.stages=1"),
    )
    assert r.code == 0, r
    probes = read_results(out)["probes"]
    assert probes["gradcam"]["status"] == "ok" and probes["gradcam"]["details"]["rows"] == 2
    patch = probes["patch"]
    assert patch["status"] == "ok" and patch["metrics"]["clean_recall"] == 1.0
    assert 0 <= patch["metrics"]["success_rate@scale=0.1"] <= 1
