"""The tasks' Estimates (auditor.stats, auditor.stats_detection) against the torchmetrics figures they stand beside:
the value at unit weights is the reported metric, and a resample is the metric of the images drawn."""

from __future__ import annotations

import pytest
import torch

from auditor.metrics import detection_map, mean_iou_score
from auditor.stats import resample_weights
from auditor.stats_detection import AP50
from auditor.tasks import InstanceDetect, Instances, Segment

SIZE = 64.0


class _Adapter:
    def __init__(self, num_classes):
        self.num_classes = num_classes


def _boxes(g, k):
    xy = torch.rand(k, 2, generator=g) * SIZE * 0.7
    wh = 4 + torch.rand(k, 2, generator=g) * SIZE * 0.3
    return torch.cat([xy, xy + wh], 1)


def detection_case(seed, n=12, classes=4, many=130):
    """Random references and detections: jittered copies of the references (some matching, some not), duplicates
    (two detections wanting one box), stray boxes, scores rounded to tie, images without references or without
    detections, and one image with more than 100 detections of a class, its matching ones scored lowest (COCO keeps
    the first 100 of a class in an image)."""
    g = torch.Generator().manual_seed(seed)
    preds, refs = [], []
    for i in range(n):
        k = 0 if i % 5 == 1 else int(torch.randint(1, 7, (1,), generator=g))
        ref = torch.cat([torch.randint(classes, (k, 1), generator=g).float(), _boxes(g, k)], 1)
        if i % 6 == 4 and k:
            ref[0, [1, 3]] = ref[0, [3, 1]]  # corners swapped: a negative area, which COCO ignores
        copies = ref.repeat(2, 1)[: int(torch.randint(0, 2 * k + 1, (1,), generator=g))]
        jitter = torch.randn(len(copies), 4, generator=g) * float(torch.rand(1, generator=g)) * 6
        stray = int(torch.randint(0, 5, (1,), generator=g)) + (many if i == 3 else 0)
        boxes = torch.cat([copies[:, 1:] + jitter, _boxes(g, stray)])
        labels = torch.cat([copies[:, 0].long(), torch.randint(classes, (stray,), generator=g)])
        if i == 3 and many:
            ref[:, 0], labels[:] = 0, 0
        if i % 7 == 2:  # nothing detected
            boxes, labels = boxes[:0], labels[:0]
        scores = (torch.rand(len(boxes), generator=g) * 10).round() / 10  # ties, within and across images
        if i == 3 and many:
            scores = torch.cat([scores[: len(copies)] * 0.4, 0.5 + scores[len(copies) :] / 2])
        preds.append({"boxes": boxes, "scores": scores, "labels": labels})
        refs.append(ref)
    return preds, refs


@pytest.mark.parametrize("seed", range(6))
def test_ap50_equals_torchmetrics(seed):
    preds, refs = detection_case(seed)
    assert AP50.of_boxes(preds, refs).value == pytest.approx(
        detection_map(preds, refs, map50_only=True)["map50"], abs=1e-6
    )


def test_ap50_resample_is_the_images_drawn():
    """A replicate is mAP50 of the images repeated as often as the resample draws them (scores without ties:
    then the weighted curve is exactly the repeated images')."""
    preds, refs = detection_case(7, n=10)
    for p in preds:
        p["scores"] = torch.rand(len(p["scores"]), generator=torch.Generator().manual_seed(len(p["scores"]))) + 0.01
    est = AP50.of_boxes(preds, refs)
    weights = resample_weights(len(preds))[:4]
    reps = est.replicates(weights)
    for w, rep in zip(weights, reps):
        idx = [i for i, k in enumerate(w.long().tolist()) for _ in range(k)]
        want = detection_map([preds[i] for i in idx], [refs[i] for i in idx], map50_only=True)["map50"]
        assert float(rep) == pytest.approx(want, abs=1e-6)
    assert reps.std() > 0  # the resamples differ


def _pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_ap50_coco_rules():
    """Hand-made cases where COCO's details decide: a detection between two equal-IoU boxes takes the last one (so
    the next detection misses), and recall thresholds are torchmetrics' float32 ones (10 boxes: recall 0.3 falls
    short of float32(0.3))."""
    refs = [torch.tensor([[0.0, 8, 0, 18, 10], [0.0, 12, 0, 22, 10]])]
    preds = [_pred([[10, 0, 20, 10], [14, 0, 24, 10]], [0.9, 0.8], [0, 0])]
    assert AP50.of_boxes(preds, refs).value == pytest.approx(detection_map(preds, refs, map50_only=True)["map50"])
    assert AP50.of_boxes(preds, refs).value < 0.6  # the first-of-equals reading would find both: 1.0
    refs = [torch.tensor([[0.0, 0, 0, 10, 10]])] * 10
    hit, miss = [0, 0, 10, 10], [20, 20, 30, 30]
    preds = [_pred([hit, miss], [1 - i / 10, 0.95 - i / 10], [0, 0]) for i in range(10)]
    assert AP50.of_boxes(preds, refs).value == pytest.approx(detection_map(preds, refs, map50_only=True)["map50"])


def test_ap50_edge_cases():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    ref = torch.tensor([[1.0, 0, 0, 10, 10]])
    assert AP50.of_boxes([empty], [ref]).value == 0.0  # ground truth, nothing found
    hit = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    assert AP50.of_boxes([hit, empty], [ref, ref[:0]]).value == pytest.approx(1.0, abs=1e-12)  # 1 / (1 + eps), as COCO
    assert AP50.of_boxes([hit], [ref[:0]]).value is None  # no ground truth: undefined (torchmetrics: -1)
    assert AP50.of_boxes([], []).value is None


def test_segment_miou_equals_torchmetrics():
    from torchmetrics.classification import MulticlassConfusionMatrix

    g = torch.Generator().manual_seed(0)
    num = 5  # class 4 never appears: left out of the mean, as torchmetrics leaves it
    pred = torch.randint(4, (9, 17, 13), generator=g)
    ref = torch.randint(4, (9, 17, 13), generator=g)
    ref[torch.rand(ref.shape, generator=g) < 0.2] = 255
    ref[2] = 255  # an image with nothing scored
    est = Segment().estimates(pred, ref, _Adapter(num))["miou"]
    # torchmetrics divides in float32: the reported figure agrees to its precision ...
    assert est.value == pytest.approx(mean_iou_score(pred, ref, num), abs=1e-6)
    # ... and the counts are its confusion matrix's exactly
    cm = MulticlassConfusionMatrix(num, ignore_index=255)(pred, ref).double()
    inter, union = cm.diag(), cm.sum(0) + cm.sum(1) - cm.diag()
    assert torch.equal(est.inter.sum(0), inter) and torch.equal(est.union.sum(0), union)
    iou = inter[union > 0] / union[union > 0]
    assert est.value == pytest.approx(float(iou.mean()), abs=1e-12)
    reps = est.replicates(resample_weights(9))
    assert reps.isfinite().all() and reps.std() > 0


def test_instances_estimates_equal_scores():
    """Box and mask AP50 of an instance segmenter equal torchmetrics' map50 and mask_map50 (same evaluation)."""
    g = torch.Generator().manual_seed(3)
    preds, refs = detection_case(11, n=6, classes=3, many=0)
    grid = (16, 16)

    def masks_of(boxes):
        yy, xx = torch.meshgrid(torch.arange(grid[0]) * 4 + 1.5, torch.arange(grid[1]) * 4 + 1.5, indexing="ij")
        inside = (xx >= boxes[:, None, None, 0]) & (xx < boxes[:, None, None, 2])
        inside &= (yy >= boxes[:, None, None, 1]) & (yy < boxes[:, None, None, 3])
        return inside & (torch.rand(len(boxes), *grid, generator=g) < 0.8)

    for p in preds:
        p["masks"] = masks_of(p["boxes"])
    reference = Instances(refs, [masks_of(r[:, 1:5]) for r in refs])
    task = InstanceDetect()
    est = task.estimates(preds, reference, None)
    want = task.scores(preds, reference, None)
    assert set(est) == set(want) == {"map50", "mask_map50"}
    for key in want:
        assert est[key].value == pytest.approx(want[key], abs=1e-6)
    assert est["map50"].value != pytest.approx(est["mask_map50"].value)  # the masks are matched by their own IoU
