"""The ModelAdapter contract: every probe talks to a model through it.

Pixel space: inputs are float tensors in [0, 1], N x C x H x W. Normalisation lives
inside ``forward`` so that an epsilon of 4/255 means four grey levels for every model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

TASKS = ("classify", "detect", "segment")
MAP_CONF = 0.001  # detectors: keep low-confidence boxes for mAP, as COCO evaluation does
SHOW_CONF = 0.25  # detectors: boxes shown, and the label-free reference

# Capabilities an adapter may declare (ModelAdapter.capabilities), beyond the contract every adapter keeps.
# BOX_TARGETS: `detect_with_anchors(outputs)` gives each shown box with the head column (anchor) that holds
# it (a two-stage model: its proposal's region), `anchor_scores(outputs, anchors, classes)` a differentiable
# score per box, what gradcam explains, and `candidates(outputs)` every candidate box and its class scores,
# what the detector patch suppresses.
BOX_TARGETS = "box_targets"
# INSTANCE_MASKS (with BOX_TARGETS): every box has an instance mask. Predictions carry "masks" (N_i x h x w bool, at
# the prototype grid), `mask_logits(outputs, images, anchors)` gives an instance's mask logits at the input size and
# `instance_scores(outputs, anchors, masks)` a differentiable score per instance: what gradcam explains.
INSTANCE_MASKS = "instance_masks"


@dataclass(frozen=True)
class Preprocess:
    """How a file on disk becomes a uint8 C x H x W tensor at the model's input size.

    ``resize`` follows torchvision: an int resizes the shorter side, a pair sets (H, W).
    Scaling to [0, 1] happens per batch; normalisation happens inside the adapter.
    """

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None = None

    def transform(self):
        steps = [v2.ToImage(), v2.Resize(self.resize, antialias=True)]
        if self.crop is not None:
            steps.append(v2.CenterCrop(self.crop))
        return v2.Compose(steps)


@dataclass
class ModelFacts:
    """What the report and results.json say about a model."""

    name: str
    source: str  # zoo | torchvision | torchscript | export | import
    sha256: str | None = None
    weights: str | None = None
    notes: list[str] = field(default_factory=list)


class ModelAdapter(nn.Module, abc.ABC):
    """Wraps a network so that it takes pixel-space input and says what it is."""

    task: str = ""
    capabilities: frozenset[str] = frozenset()  # see BOX_TARGETS and its kin above

    def __init__(
        self,
        net: nn.Module,
        *,
        facts: ModelFacts,
        class_names: list[str],
        input_size: tuple[int, int],
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        preprocess: Preprocess,
        epsilons: tuple[str, ...],
        eval_set: Any = None,
    ):
        super().__init__()
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} values, got {len(mean)} and {len(std)}")
        self.net = net
        self.facts = facts
        self.class_names = list(class_names)
        self.input_size = tuple(input_size)
        self.channels = channels
        self.mean_values, self.std_values = tuple(mean), tuple(std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.preprocess = preprocess
        self.epsilons = tuple(epsilons)
        self.eval_set = eval_set  # zoo models: (name, seed -> tensors or folder, default limit); else None
        self._cam_layers: list[tuple[str, nn.Module]] | None = None
        # Exported models (.pt2): the program, whose flat graph's nodes gradcam can tap (auditor.models.graphs).
        self.program: torch.export.ExportedProgram | None = None

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @abc.abstractmethod
    def predict(self, x: torch.Tensor) -> Any:
        """The task's decoded output for pixel-space input."""

    @abc.abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """A per-image loss (shape N) that attacks ascend."""

    def objective(self, x: torch.Tensor, targets: Any) -> torch.Tensor:
        """The per-image loss of pixel-space input x: what an attack differentiates."""
        return self.loss(self(x), targets)

    @property
    def cam_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the layers whose maps explain the output: the last spatial block."""
        if self._cam_layers is None:
            self._cam_layers = [find_last_spatial_module(self.net, self.normalize(self.example_input()))]
        return self._cam_layers

    def set_cam_layers(self, names: list[str]) -> None:
        modules = dict(self.net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(missing[0])
        self._cam_layers = [(n, modules[n]) for n in names]

    def prefer_channels_last(self) -> ModelAdapter:
        """Keep conv weights in NHWC, where oneDNN and cuDNN convolve fastest.

        Measured on 2 CPU cores, batch as in the default audits: predict 2.2x faster for
        shapes-unet, 1.2x for shapes-yolov8n; forward+backward 1.4x and 1.2x. Inputs stay
        NCHW (the first convolution converts). TorchScript and exported graphs are left as
        they are: their layouts are fixed where they were made.
        """
        if self.program is None and not isinstance(self.net, (torch.jit.ScriptModule, torch.fx.GraphModule)):
            self.net.to(memory_format=torch.channels_last)
        return self

    def example_input(self, n: int = 1) -> torch.Tensor:
        device = self.mean.device
        return torch.rand(n, self.channels, *self.input_size, device=device)

    def describe(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.net.parameters())
        return {
            "task": self.task,
            "classes": self.num_classes,
            "input": f"{self.channels}x{self.input_size[0]}x{self.input_size[1]}",
            "mean": list(self.mean_values),
            "std": list(self.std_values),
            "parameters": n_params,
        }


class ClassifierAdapter(ModelAdapter):
    task = "classify"

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(dim=1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")


class SegmenterAdapter(ModelAdapter):
    """Per-pixel logits N x K x H x W; `predict` gives N x H x W class ids."""

    task = "segment"
    ignore_index = 255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        if isinstance(out, dict):  # torchvision segmentation models return {"out": ..., "aux": ...}
            out = out["out"]
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(dim=1)

    @property
    def cam_layers(self) -> list[tuple[str, nn.Module]]:
        """The last spatial block before the classifier head (the last one with other than K channels).

        The head's own output is the logits: a Grad-CAM there is the class's logit map again.
        """
        if self._cam_layers is None:
            with torch.no_grad():
                classes = self(self.example_input()).shape[1]
            self._cam_layers = [
                find_last_spatial_module(
                    self.net, self.normalize(self.example_input()), skip=lambda out: out.shape[1] == classes
                )
            ]
        return self._cam_layers

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy, averaged over each image's labelled pixels."""
        per_pixel = F.cross_entropy(outputs, targets, ignore_index=self.ignore_index, reduction="none")
        valid = (targets != self.ignore_index).flatten(1).sum(1).clamp_min(1)
        return per_pixel.flatten(1).sum(1) / valid


def find_last_spatial_module(
    net: nn.Module, example: torch.Tensor, skip: Callable[[torch.Tensor], bool] = lambda out: False
) -> tuple[str, nn.Module]:
    """The last module, in execution order, whose output is N x C x H x W with H, W > 1 (and not `skip`ped).

    Forward hooks fire when a module returns, so a container (ResNet's ``layer4``, VGG's
    ``features``) is seen after its children: the result is the last spatial *block*.
    """
    seen: list[tuple[str, nn.Module]] = []
    handles = []
    for name, module in net.named_modules():
        if module is net:
            continue

        def hook(mod, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[-2:]) > 1 and not skip(out):
                seen.append((name, mod))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("the model has no module with a spatial (N x C x H x W) output")
    return seen[-1]
