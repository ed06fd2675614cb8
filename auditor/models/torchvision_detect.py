"""torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, SSD): lists in, lists out, and a score per box.

Grad-CAM explains a box by one differentiable scalar, and deletion and insertion read the
same scalar on changed images, so it must name the same thing in any image, as an
ultralytics box's "class c at head column a" does. torchvision returns boxes after NMS
and says nothing of where they came from; each forward here also keeps (`Tap`) what the
model computed on the way, so that each detection is traced back to its origin and
scored there:

- one-stage models (RetinaNet, FCOS, SSD): the anchor. Anchors depend on the input size
  only, which is fixed, so an anchor is a fixed head column, as in ultralytics. Its
  score is the model's own: sigmoid of the class logit (RetinaNet), sqrt(sigmoid(class)
  * sigmoid(centre-ness)) (FCOS), softmax over the classes (SSD).
- two-stage models (Faster R-CNN; Mask and Keypoint R-CNN alike): the proposal. Proposals
  move with the input, so an index into them names another box, or none, once the image
  has changed; the proposal's *region* does not. The box's score is the second stage's
  class probability for that region, read by running the ROI head on it again over the
  image's features: on the clean image exactly the detection's score (same region, same
  features), on a changed one the same region's evidence. What it leaves out is whether
  the RPN would still propose the region; the detection's own score leaves that out too.

D-RISE (Petsiuk et al. 2021) matches a changed image's detections to the box by IoU and
class instead. Tried here first (max over same-class detections of a ramp of IoU times
score), it reads scores after torchvision's thresholds (0.05 to 0.2) and NMS, so it drops
to 0 as soon as the region is no longer proposed: on the random-weight Faster R-CNN of
the tests every map, random and Sobel included, got the same deletion AUC (0.123, the
score gone after the first of 3 steps whatever was deleted).

The origin is found by reading back: each detection's class score and box equal one
(anchor or proposal, class) pair's score and decoded box, computed with the model's own
box coder, so the nearest pair is the one the model kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import clip_boxes_to_image

from auditor.models.base import BOX_TARGETS, SHOW_CONF, ModelAdapter


@dataclass
class Tap:
    """What one forward computed on the way to its detections (hooks), for the box scores and candidates."""

    input_size: tuple[int, int]  # the adapter's input, where the detections' boxes live
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # after the model's own resize
    features: dict | None = None  # two-stage: the backbone's levels, which the ROI head pools
    proposals: list[torch.Tensor] | None = None  # two-stage: per image P x 4, in the resized image
    class_logits: torch.Tensor | None = None  # two-stage: (all images' P) x classes
    box_regression: torch.Tensor | None = None  # two-stage: (all images' P) x (classes * 4)
    head: dict | None = None  # one-stage: cls_logits N x A x classes, bbox_regression N x A x 4 (FCOS: bbox_ctrness)
    anchors: list[torch.Tensor] | None = None  # one-stage: per image A x 4, in the resized image


class Detections(list):
    """The model's own output (per image {boxes, scores, labels}) with the forward's Tap beside it."""

    def __init__(self, items, tap: Tap):
        super().__init__(items)
        self.tap = tap


class TorchvisionDetectorAdapter(ModelAdapter):
    """torchvision's detectors: lists in, lists out; their own loss comes from train mode with targets.

    Their batch norms are frozen, so train mode changes only the region-proposal budgets;
    the attack objective is the sum of the model's training losses for the reference boxes.
    BOX_TARGETS (the module docstring) for the model kinds torchvision has; `anchor` is an
    anchor index (one-stage) or a proposal box in the model's resized image (two-stage).
    """

    task = "detect"

    def __init__(self, net: nn.Module, **kwargs):
        super().__init__(net, **kwargs)
        self.stages = 2 if isinstance(net, GeneralizedRCNN) else 1 if isinstance(net, (RetinaNet, FCOS, SSD)) else 0
        self.capabilities = frozenset({BOX_TARGETS}) if self.stages else frozenset()

    def forward(self, x: torch.Tensor):
        tap = Tap(input_size=tuple(x.shape[-2:]))
        handles = self._hooks(tap) if self.stages else []
        try:
            out = self.net(list(self.normalize(x)))
        finally:
            for h in handles:
                h.remove()
        return Detections(out, tap)

    def predict(self, x: torch.Tensor, conf: float = SHOW_CONF) -> list[dict[str, torch.Tensor]]:
        return [_shown(d, conf)[0] for d in self(x)]

    def loss(self, outputs, targets) -> torch.Tensor:
        raise NotImplementedError("torchvision detectors compute their loss in objective()")

    def objective(self, x: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """The sum of the model's training losses for the reference boxes, computed on the proposals the model
        keeps when it predicts: train mode alone would also switch a two-stage model's region proposals to the
        training budgets (Faster R-CNN mobilenet-320: 2,000 in place of 150 per image), which tripled the cost of
        an attack step (2.9x the model's own forward+backward, bench/detector_step.py; 1.0x with these) and
        attacked proposals the predicting model never looks at."""
        was_training = self.net.training
        self.net.train()
        restore = _predicting_proposal_budgets(self.net)
        try:
            losses = self.net(
                list(self.normalize(x)), [{"boxes": t[:, 1:5].float(), "labels": t[:, 0].long()} for t in targets]
            )
        finally:
            self.net.train(was_training)
            restore()
        total = sum(losses.values())
        return total.expand(len(x)) / len(x)

    def _hooks(self, tap: Tap) -> list:
        net = self.net
        handles = [
            net.transform.register_forward_hook(lambda _m, _i, out: setattr(tap, "image_sizes", out[0].image_sizes))
        ]
        if self.stages == 2:
            roi = net.roi_heads

            def logits(_m, _i, out):
                tap.class_logits, tap.box_regression = out

            handles += [
                net.backbone.register_forward_hook(lambda _m, _i, out: setattr(tap, "features", out)),
                roi.register_forward_pre_hook(lambda _m, args: setattr(tap, "proposals", args[1])),
                roi.box_predictor.register_forward_hook(logits),
            ]
        else:
            handles += [
                net.head.register_forward_hook(lambda _m, _i, out: setattr(tap, "head", out)),
                net.anchor_generator.register_forward_hook(lambda _m, _i, out: setattr(tap, "anchors", out)),
            ]
        return handles

    # ---- per-box scores (BOX_TARGETS) -------------------------------------------------------------------

    def detect_with_anchors(self, outputs: Detections, conf: float = SHOW_CONF):
        """Per image: the boxes shown, and each one's origin: its anchor index (one-stage), or the
        proposal box it was decoded from, in the resized image (two-stage)."""
        found = []
        for i, d in enumerate(outputs):
            kept = {k: v.detach() for k, v in _shown(d, conf)[0].items()}
            origin = torch.zeros(len(kept["labels"]), dtype=torch.long, device=kept["labels"].device)
            if len(origin) == 0:
                found.append((kept, outputs.tap.proposals[i][:0] if self.stages == 2 else origin))
                continue
            scores, boxes = self._pairs(outputs.tap, i)  # P x classes, P x classes x 4 (or P x 4)
            for j, (box, score, label) in enumerate(zip(kept["boxes"], kept["scores"], kept["labels"])):
                pair_boxes = boxes[:, label] if boxes.dim() == 3 else boxes
                cost = (scores[:, label] - score).abs() + (pair_boxes - box).abs().sum(-1)
                origin[j] = cost.argmin()
            if self.stages == 2:
                origin = outputs.tap.proposals[i][origin].detach()
            found.append((kept, origin))
        return found

    @torch.no_grad()
    def _pairs(self, tap: Tap, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image i's every (origin, class) score, and its decoded boxes in input pixels (two-stage: one per
        class, P x classes x 4; one-stage: one per anchor, A x 4), as the model computes them."""
        if self.stages == 1:
            return self._anchor_probabilities(tap.head, (i,)), self._decoded(tap, i)
        counts = [len(p) for p in tap.proposals]
        rows = slice(sum(counts[:i]), sum(counts[: i + 1]))
        boxes = self.net.roi_heads.box_coder.decode(tap.box_regression[rows], [tap.proposals[i]])
        boxes = clip_boxes_to_image(boxes, tap.image_sizes[i])
        in_pixels = resize_boxes(boxes.reshape(-1, 4), list(tap.image_sizes[i]), list(tap.input_size))
        return F.softmax(tap.class_logits[rows], -1), in_pixels.reshape(boxes.shape)

    def _decoded(self, tap: Tap, i: int) -> torch.Tensor:
        """One-stage: image i's anchors decoded by the model's box coder, clipped, in input pixels (A x 4)."""
        coder = self.net.box_coder
        decode = coder.decode_single if hasattr(coder, "decode_single") else coder.decode  # FCOS: BoxLinearCoder
        boxes = clip_boxes_to_image(decode(tap.head["bbox_regression"][i], tap.anchors[i]), tap.image_sizes[i])
        return resize_boxes(boxes, list(tap.image_sizes[i]), list(tap.input_size))

    def _anchor_probabilities(self, head: dict, index: tuple) -> torch.Tensor:
        """The one-stage model's own class scores at head entries `index` (... x classes)."""
        logits = head["cls_logits"][index]
        if isinstance(self.net, FCOS):
            return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"][index]))
        if isinstance(self.net, SSD):
            return F.softmax(logits, -1)
        return torch.sigmoid(logits)

    def anchor_scores(self, outputs: Detections, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Row i's score of class `labels[i]` at origin `anchors[i]` in image i of `outputs`, from the
        forward's own tensors so that its gradient reaches the input: the anchor's class score (one-stage),
        the ROI head's class probability for the proposal's region (two-stage)."""
        tap = outputs.tap
        rows = torch.arange(len(labels), device=labels.device)
        if self.stages == 1:
            return self._anchor_probabilities(tap.head, (rows, anchors))[rows, labels]
        roi = self.net.roi_heads
        regions = [a[None].to(tap.proposals[0].dtype) for a in anchors]
        pooled = roi.box_roi_pool(tap.features, regions, tap.image_sizes)
        class_logits, _ = roi.box_predictor(roi.box_head(pooled))
        return F.softmax(class_logits, -1)[rows, labels]

    def candidates(self, outputs: Detections) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate before NMS, from the forward's own tensors (gradients reach the input), for the patch
        probe: boxes N x A x 4 (input pixels) and class scores N x classes x A. One-stage: every anchor and its
        decoded box. Two-stage: every proposal (its region as the box, padded with empty boxes to the most
        proposals of an image) and the second stage's class probabilities. The background class of a softmax
        (SSD, R-CNN) scores 0: it is no detection."""
        tap = outputs.tap
        if self.stages == 1:
            scores = self._anchor_probabilities(tap.head, (slice(None),))
            boxes = torch.stack([self._decoded(tap, i) for i in range(len(outputs))])
        else:
            counts = [len(p) for p in tap.proposals]
            n = max(counts)
            probabilities = F.softmax(tap.class_logits, -1).split(counts)
            scores = tap.class_logits.new_zeros(len(counts), n, tap.class_logits.shape[1])
            boxes = tap.class_logits.new_zeros(len(counts), n, 4)
            for i, (p, k) in enumerate(zip(probabilities, counts)):
                scores[i, :k] = p
                boxes[i, :k] = resize_boxes(tap.proposals[i], list(tap.image_sizes[i]), list(tap.input_size))
        if isinstance(self.net, (SSD, GeneralizedRCNN)):
            scores = torch.cat([torch.zeros_like(scores[..., :1]), scores[..., 1:]], -1)
        return boxes, scores.transpose(1, 2)

    @property
    def cam_layers(self) -> list[tuple[str, nn.Module]]:
        """The feature maps the heads read (feature_levels): the FPN's levels, or SSD's extractor's maps."""
        if self._cam_layers is None:
            self._cam_layers = feature_levels(self.net, self.normalize(self.example_input()))
        return self._cam_layers


def _predicting_proposal_budgets(net: nn.Module):
    """Set a two-stage model's region proposal network to keep, in train mode, as many proposals as it keeps when it
    predicts (before and after its NMS); returns the function that puts the training budgets back. A model without
    one is left as it is."""
    rpn = getattr(net, "rpn", None)
    if rpn is None or not hasattr(rpn, "_pre_nms_top_n"):
        return lambda: None
    saved = dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n)
    for budget in (rpn._pre_nms_top_n, rpn._post_nms_top_n):
        budget["training"] = budget["testing"]

    def restore() -> None:
        rpn._pre_nms_top_n, rpn._post_nms_top_n = saved

    return restore


def _shown(d: dict[str, torch.Tensor], conf: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One image's detections at confidence >= conf, and their indices among all of them."""
    keep = torch.nonzero(d["scores"] >= conf).flatten()
    return {k: d[k][keep] for k in ("boxes", "scores", "labels")}, keep


def feature_levels(net: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """(name, module) for each feature map the detection heads read, finest first: what Grad-CAM sums.

    torchvision's detectors all read `net.backbone`'s output, an ordered dict of levels (FPN's
    P2..P7 for Faster R-CNN, RetinaNet and FCOS; the extractor's six maps for SSD). A level
    is tapped at the module that returns it. A level a function makes is tapped at the last
    module before the later levels whose output has its shape: SSD-VGG L2-normalises the VGG
    trunk's conv4_3 output, so the trunk stands for it. FPN's max-pooled "pool" level has
    none and needs none: it is pooled from the last FPN level, whose map gets its gradient.
    Levels of 1 x 1 are left out: their map is a constant over the image.

    Not find_last_spatial_module: the last spatial output of a two-stage model is the
    ROI-pooled crop (proposals x C x 7 x 7), not a map of the image.
    """
    backbone = getattr(net, "backbone", None)
    if backbone is None:
        raise ValueError("the detector has no `backbone` whose feature maps its heads read")
    fired: list[tuple[str, nn.Module, object]] = []  # every module's output, in the order they return
    handles = [
        module.register_forward_hook(lambda m, _i, out, name=name: fired.append((name, m, out)))
        for name, module in backbone.named_modules()
    ]
    try:
        with torch.no_grad():
            net(list(example))
    finally:
        for h in handles:
            h.remove()
    levels = next(out for _, m, out in fired if m is backbone)
    fired = [f for f in fired if f[1] is not backbone]  # its modules' outputs are the candidates
    levels = list(levels.values()) if isinstance(levels, dict) else [levels]
    is_level = [any(out is level for level in levels) for _, _, out in fired]
    picked: list[int] = []
    for k, level in enumerate(levels):
        if min(level.shape[-2:]) <= 1:
            continue
        exact = [i for i, (_, _, out) in enumerate(fired) if out is level]
        if not exact:
            later = [i for i, (_, _, out) in enumerate(fired) if any(out is v for v in levels[k + 1 :])]
            stop = min(later, default=len(fired))
            exact = [
                i
                for i, (_, _, out) in enumerate(fired[:stop])
                if isinstance(out, torch.Tensor) and out.shape == level.shape and not is_level[i]
            ]
        if exact and exact[-1] not in picked:
            picked.append(exact[-1])
    if not picked:
        raise ValueError("the detector's backbone returns no spatial feature map to explain")
    picked.sort(key=lambda i: -fired[i][2].shape[-2:].numel())  # Grad-CAM sums at the first (finest) size
    return [(f"backbone.{fired[i][0]}", fired[i][1]) for i in picked]
