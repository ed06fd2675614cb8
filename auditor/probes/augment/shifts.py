"""Input shifts for the `augment` probe: the ImageNet-C corruptions, geometric and photometric shifts.

Every shift takes a batch in [0, 1] and a severity 1..len(levels) and returns the shifted
batch and, for geometric shifts, the per-image affine map (3 x 3, output pixel -> input
pixel, pixel centres at integer coordinates) that the references must follow: masks are
warped with it, boxes moved by its inverse, class labels stay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms.v2.functional import adjust_hue, adjust_saturation

from auditor.probes.augment.corruptions import CORRUPTIONS, FAMILIES, corrupt
from auditor.tasks.warp import warp_images

ROTATE_DEGREES = (5, 10, 15, 20, 30)  # random sign per image
TRANSLATE_SHARE = (0.05, 0.10, 0.15, 0.20, 0.25)  # of the image side, random direction per image
SCALE_FACTOR = (0.9, 0.8, 0.7, 0.6, 0.5)  # zoom out about the centre, black border
HUE_SHIFT = (0.05, 0.1, 0.2, 0.3, 0.5)  # turns of the colour wheel
SATURATION = (0.8, 0.6, 0.4, 0.2, 0.0)  # saturation factor (0: grey)
GAMMA = (1.25, 1.5, 2.0, 2.5, 3.0)  # x ** gamma: darker mid-tones


@dataclass(frozen=True)
class Shift:
    name: str
    family: str  # noise, blur, weather, digital (ImageNet-C), geometric or photometric
    levels: tuple[str, ...]  # what each severity means, for the report
    fn: Callable  # (x, severity index, generator, scale) -> (x, affine or None)
    colour_only: bool = False  # meaningless on single-channel images

    @property
    def imagenet_c(self) -> bool:
        return self.name in CORRUPTIONS

    def apply(
        self, x: torch.Tensor, severity: int, generator: torch.Generator | None, scale: float | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not 1 <= severity <= len(self.levels):
            raise ValueError(f"{self.name}: severity must be 1..{len(self.levels)}, got {severity}")
        return self.fn(x, severity, generator, scale)


def _corruption(name: str) -> Callable:
    def fn(x, severity, generator, scale):
        return corrupt(x, name, severity, generator, scale), None

    return fn


# ---------------------------------------------------------------- geometric


def _centred(h: int, w: int, linear: torch.Tensor) -> torch.Tensor:
    """B x 3 x 3 maps applying `linear` (B x 2 x 2, output -> input) about the image centre."""
    b = len(linear)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a = torch.eye(3, device=linear.device).repeat(b, 1, 1)
    a[:, :2, :2] = linear
    c = torch.tensor([cx, cy], device=linear.device)
    a[:, :2, 2] = c - (linear @ c)
    return a


def _rotate(x, severity, generator, scale):
    b, _, h, w = x.shape
    sign = torch.where(torch.rand(b, generator=generator, device=x.device) < 0.5, -1.0, 1.0)
    angle = sign * math.radians(ROTATE_DEGREES[severity - 1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    a = _centred(h, w, linear)
    return warp_images(x, a), a


def _translate(x, severity, generator, scale):
    b, _, h, w = x.shape
    direction = torch.rand(b, generator=generator, device=x.device) * 2 * math.pi
    share = TRANSLATE_SHARE[severity - 1]
    a = torch.eye(3, device=x.device).repeat(b, 1, 1)
    a[:, 0, 2] = -share * w * torch.cos(direction)  # content moves by +t, so the input is read at -t
    a[:, 1, 2] = -share * h * torch.sin(direction)
    return warp_images(x, a), a


def _scale(x, severity, generator, scale):
    b, _, h, w = x.shape
    linear = torch.eye(2, device=x.device).repeat(b, 1, 1) / SCALE_FACTOR[severity - 1]
    a = _centred(h, w, linear)
    return warp_images(x, a), a


def _hflip(x, severity, generator, scale):
    b, _, h, w = x.shape
    a = torch.eye(3, device=x.device).repeat(b, 1, 1)
    a[:, 0, 0], a[:, 0, 2] = -1, w - 1
    return x.flip(-1), a


def _hue(x, severity, generator, scale):
    return adjust_hue(x, HUE_SHIFT[severity - 1]), None


def _saturation(x, severity, generator, scale):
    return adjust_saturation(x, SATURATION[severity - 1]), None


def _gamma(x, severity, generator, scale):
    return x.clamp(0, 1) ** GAMMA[severity - 1], None


def _levels(values, fmt: str) -> tuple[str, ...]:
    return tuple(fmt.format(v) for v in values)


SHIFTS: dict[str, Shift] = {}
for _family, _names in FAMILIES.items():
    for _name in _names:
        SHIFTS[_name] = Shift(_name, _family, tuple(str(s) for s in range(1, 6)), _corruption(_name))
SHIFTS.update(
    {
        "rotate": Shift("rotate", "geometric", _levels(ROTATE_DEGREES, "±{}°"), _rotate),
        "translate": Shift("translate", "geometric", _levels(TRANSLATE_SHARE, "{:.0%}"), _translate),
        "scale": Shift("scale", "geometric", _levels(SCALE_FACTOR, "×{}"), _scale),
        "hflip": Shift("hflip", "geometric", ("mirrored",), _hflip),
        "hue": Shift("hue", "photometric", _levels(HUE_SHIFT, "{:+}"), _hue, colour_only=True),
        "saturation": Shift("saturation", "photometric", _levels(SATURATION, "×{}"), _saturation, colour_only=True),
        "gamma": Shift("gamma", "photometric", _levels(GAMMA, "γ {}"), _gamma),
    }
)
FAMILY_ORDER = ("noise", "blur", "weather", "digital", "geometric", "photometric")
