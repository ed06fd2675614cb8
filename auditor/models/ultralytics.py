"""ultralytics source: YOLO detectors built from YAML, zoo state dicts, or ultralytics checkpoints.

The adapter talks to the inner `DetectionModel` (an nn.Module), never to the `YOLO`
wrapper: `YOLO.eval()`-style calls on the wrapper can start training, and the wrapper's
predict pipeline leaves torch for numpy. In eval mode the detection head returns both the
decoded boxes and its raw outputs, so one forward serves predictions and the training
loss that attacks ascend.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import yaml
from PIL import Image
from torch import nn

from auditor.errors import AuditError, first_line
from auditor.files import sha256_of
from auditor.models.base import BOX_TARGETS, SHOW_CONF, ModelAdapter, ModelFacts, Preprocess
from auditor.models.common import apply_state_dict, load_state_dict

# ultralytics itself is imported inside the functions that use it: it is heavy (about 2 s), sets itself up
# on import (settings, analytics), and only detectors need it; quiet_ultralytics() runs before it is used.
NMS_IOU = 0.7  # ultralytics' validation default


def quiet_ultralytics() -> None:
    """No analytics, no package installs and no log chatter from the audit's process.

    Importing ultralytics replaces PIL.Image.open with a wrapper that pip-installs a HEIF
    plugin when a file cannot be identified; the audit puts PIL's own function back, so a
    corrupt image is reported, never answered with an install. Users' settings files stay
    untouched.
    """
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    import ultralytics.utils.events as events
    import ultralytics.utils.patches as patches

    events.events.enabled = False
    Image.open = patches._image_open


def detection_model(cfg: str, nc: int) -> nn.Module:
    """An ultralytics DetectionModel (or SegmentationModel for -seg) from a YAML ultralytics ships or a file."""
    quiet_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel, guess_model_task

    model_class = SegmentationModel if guess_model_task(cfg) == "segment" else DetectionModel
    net = model_class(cfg, nc=nc, verbose=False)
    net.args = get_cfg()  # the loss gains (box, cls, dfl) the trainer would set
    return net


class DetectorAdapter(ModelAdapter):
    """Boxes in pixels of the model input: `predict` gives per image {boxes xyxy, scores, labels}."""

    task = "detect"
    capabilities = frozenset({BOX_TARGETS})

    def forward(self, x: torch.Tensor):
        return self.net(self.normalize(x))  # eval: (decoded N x (4 + nc) x anchors, raw head outputs)

    def predict(self, x: torch.Tensor, conf: float = SHOW_CONF) -> list[dict[str, torch.Tensor]]:
        return self.decode(self(x), conf)

    def decode(self, outputs, conf: float = SHOW_CONF) -> list[dict[str, torch.Tensor]]:
        return [d for d, _ in self.detect_with_anchors(outputs, conf)]

    def detect_with_anchors(
        self, outputs, conf: float = SHOW_CONF
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Per image: the kept boxes, and the anchor (column of the head's output) NMS kept for each."""
        from ultralytics.utils.nms import non_max_suppression

        kept, anchors = non_max_suppression(
            _decoded(outputs).detach(),
            conf_thres=conf,
            iou_thres=NMS_IOU,
            max_det=300,
            max_time_img=10.0,
            return_idxs=True,
            nc=self.num_classes,
        )
        return [
            ({"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].long()}, a.long().view(-1))
            for d, a in zip(kept, anchors)
        ]

    def anchor_scores(self, outputs, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Row i's class probability `labels[i]` at anchor `anchors[i]`, taken from `outputs` itself so that
        its gradient reaches the input: Grad-CAM's target for one box, the same neuron in any copy of the net."""
        decoded = _decoded(outputs)
        return decoded[torch.arange(len(anchors), device=decoded.device), 4 + labels, anchors]

    def candidates(self, outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate of the head before NMS, from `outputs` itself (so gradients reach the input): boxes
        N x A x 4 (xyxy, input pixels) and class probabilities N x classes x A. YOLOv8 has no objectness score:
        a candidate's highest class probability stands in for it (the patch probe pushes it down)."""
        decoded = _decoded(outputs)  # N x (4 + classes [+ mask coefficients]) x A; boxes cx, cy, w, h
        xywh = decoded[:, :4].transpose(1, 2)
        boxes = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)
        return boxes, decoded[:, 4 : 4 + self.num_classes]

    @property
    def cam_layers(self) -> list[tuple[str, nn.Module]]:
        """The feature maps the Detect head reads (one per pyramid level: P3, P4, P5 for YOLOv8).

        A box's score comes from one level; the head's own last layers see one level each.
        """
        if self._cam_layers is None:
            head = self.net.model[-1]
            self._cam_layers = [(f"model.{i}", self.net.model[i]) for i in head.f]
        return self._cam_layers

    def loss(self, outputs, targets: list[torch.Tensor]) -> torch.Tensor:
        """ultralytics' own training loss (box + cls + DFL) against targets K x 5 (class, x0, y0, x1, y1).

        The criterion sums over the batch, so each image gets an equal share of the total.
        """
        if getattr(self, "_criterion", None) is None:
            from ultralytics.utils.loss import v8DetectionLoss

            self._criterion = v8DetectionLoss(self.net)
        total, _ = self._criterion(outputs, self.loss_batch(targets))
        n = len(targets)
        return total.sum().expand(n) / n

    def loss_batch(self, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Targets K x 5 per image as ultralytics' criteria take them: image index, class, normalised cx cy w h."""
        h, w = self.input_size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.mean.device)
        idx, cls, boxes = [], [], []
        for i, t in enumerate(targets):
            t = t.to(self.mean.device).float()
            idx.append(torch.full((len(t),), float(i), device=t.device))
            cls.append(t[:, 0])
            xyxy = t[:, 1:5] / scale
            boxes.append(torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1))
        return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls).view(-1, 1), "bboxes": torch.cat(boxes)}


# Globals an ultralytics checkpoint may need when unpickled; anything else (os.system, eval,
# a user's own module) means code we were not asked to run.
SAFE_GLOBAL_PREFIXES = (
    "ultralytics.",
    "torch.",
    "collections.",
    "numpy.",
    "builtins.set",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.slice",
    "builtins.frozenset",
    "pathlib.",
    "datetime.",
    "types.SimpleNamespace",
    "argparse.Namespace",
    "_codecs.encode",
    "copyreg._reconstructor",
    "builtins.object",
    "builtins.bytearray",
)


def check_checkpoint_globals(path: Path) -> None:
    """Refuse a pickle that needs globals outside the allow-list (unless the user trusts it)."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:
        raise AuditError(f"--model {path}: not a readable checkpoint: {first_line(exc)}") from exc
    bad = sorted(g for g in needed if not g.startswith(SAFE_GLOBAL_PREFIXES))
    if bad:
        raise AuditError(
            f"--model {path}: the checkpoint would run code outside ultralytics and torch when loaded "
            f"({', '.join(bad[:3])}); pass --trust-model only if you trust its author"
        )


def _decoded(outputs) -> torch.Tensor:
    """The decoded N x (4 + nc [+ mask coefficients]) x anchors tensor from a head's eval output."""
    decoded = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    return decoded[0] if isinstance(decoded, (tuple, list)) else decoded  # -seg heads: (boxes, protos)


def adapter_for(net: nn.Module, spec, *, facts: ModelFacts, names: list[str], size: int) -> ModelAdapter:
    kind = type(net).__name__
    if kind not in ("DetectionModel", "SegmentationModel"):
        raise AuditError(
            f"--model {spec.model}: an ultralytics {kind}; detectors and -seg models are supported "
            "(pose, OBB and classification heads are not)"
        )
    adapter_class = DetectorAdapter
    if kind == "SegmentationModel":
        from auditor.models.ultralytics_seg import InstanceAdapter

        adapter_class = InstanceAdapter
        facts.notes.append(
            "ultralytics -seg model: boxes and instance masks scored (mask mAP50 beside box mAP50 where the "
            "reference has masks: label-free, the clean prediction's); gradcam explains each instance's mask"
        )
    if not hasattr(net, "args") or isinstance(net.args, dict):
        from ultralytics.cfg import get_cfg

        net.args = get_cfg(
            overrides={k: v for k, v in (net.args or {}).items() if k in ("box", "cls", "dfl")}
            if isinstance(getattr(net, "args", None), dict)
            else None
        )
    input_size = spec.input_size or (size, size)
    return adapter_class(
        net.float().eval(),
        facts=facts,
        class_names=names,
        input_size=input_size,
        channels=3,
        mean=(0.0,),
        std=(1.0,),
        preprocess=Preprocess(resize=input_size),
        epsilons=("1/255", "2/255", "4/255", "8/255"),
    )


def load_yaml_model(path: Path, spec) -> ModelAdapter:
    """An untrained detector from an ultralytics model YAML (yolov8n.yaml, or a file)."""
    quiet_ultralytics()
    names = spec.class_names()
    cfg = str(path)
    nc = len(names) if names else None
    if nc is None:
        try:
            from ultralytics.nn.tasks import yaml_model_load

            nc = int(yaml_model_load(cfg).get("nc", 80))
        except (OSError, yaml.YAMLError, FileNotFoundError) as exc:
            raise AuditError(f"--model {path}: not an ultralytics model YAML: {first_line(exc)}") from exc
    try:
        net = detection_model(cfg, nc=nc)
    except Exception as exc:
        raise AuditError(f"--model {path}: cannot build a detector from it: {first_line(exc)}") from exc
    facts = ModelFacts(name=Path(cfg).name, source="ultralytics")
    facts.notes.append("built from a model YAML: random weights, unless --weights gives a state dict")
    if spec.weights is not None:
        apply_state_dict(net, load_state_dict(spec.weights, spec.trust_model), spec.weights)
        facts.weights, facts.sha256 = spec.weights, sha256_of(spec.weights)
    return adapter_for(net, spec, facts=facts, names=names or [str(i) for i in range(nc)], size=640)


def load_checkpoint_model(path: Path, spec) -> ModelAdapter:
    """A checkpoint written by ultralytics (a pickled model): globals checked first."""
    quiet_ultralytics()
    if not spec.trust_model:
        check_checkpoint_globals(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)  # globals checked above
    except Exception as exc:
        raise AuditError(f"--model {path}: cannot load this checkpoint: {first_line(exc)}") from exc
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module):
        raise AuditError(
            f"--model {path}: not an ultralytics checkpoint (no model inside); a bare state dict needs "
            "its architecture: --model ARCH.yaml --weights FILE"
        )
    names = spec.class_names() or [str(n) for n in (dict(net.names).values() if hasattr(net, "names") else [])]
    train_args = ckpt.get("train_args") or {}
    size = int(train_args.get("imgsz", 640)) if isinstance(train_args.get("imgsz", 640), (int, float)) else 640
    facts = ModelFacts(name=path.name, source="ultralytics", sha256=sha256_of(path), weights=str(path))
    return adapter_for(net, spec, facts=facts, names=names, size=size)


def local_weights(file: str) -> Path | None:
    """`file` here or in ultralytics' weights folder, where ultralytics looks before it downloads."""
    quiet_ultralytics()
    from ultralytics.utils import SETTINGS

    for candidate in (Path(file), Path(SETTINGS.get("weights_dir", "")) / file):
        if candidate.is_file():
            return candidate
    return None


def resolve_named_weights(name: str, spec) -> Path:
    """`yolov8n` or `yolov8n.pt`: a local file, ultralytics' weights folder, or ultralytics' download."""
    file = name if name.endswith(".pt") else f"{name}.pt"
    local = local_weights(file)
    if local is not None:
        return local
    if spec.offline:
        raise AuditError(
            f"{file}: not found here or in ultralytics' weights folder and --offline was given; "
            "download it once online (audit run --model " + name + ") or pass its path"
        )
    from ultralytics.utils.downloads import attempt_download_asset

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        got = Path(attempt_download_asset(file))
    except Exception as exc:
        raise AuditError(
            f"{file}: not found locally and ultralytics could not download it ({first_line(exc)}); "
            "pass the path of a local copy"
        ) from exc
    finally:
        socket.setdefaulttimeout(old)
    if not got.is_file():
        raise AuditError(
            f"{file}: not found locally and ultralytics could not download it; pass the path of a local copy"
        )
    return got


def known_names() -> frozenset[str]:
    """The model names ultralytics can fetch by name (yolov8n, yolo11s-seg, ...)."""
    quiet_ultralytics()
    from ultralytics.utils.downloads import GITHUB_ASSETS_STEMS

    return frozenset(GITHUB_ASSETS_STEMS)


def is_ultralytics_name(name: str) -> bool:
    return name.removesuffix(".pt") in known_names()
