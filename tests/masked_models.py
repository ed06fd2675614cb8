"""Models that hide their input gradients, each wrapped around a working model: what the attacks probe must see
through (a quantised input, a layer whose backward is zero, a non-differentiable input, softmax outputs)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Quantise(nn.Module):
    """The input rounded to `levels` grey levels: round() has a zero gradient everywhere."""

    def __init__(self, levels: int = 16):
        super().__init__()
        self.levels = levels

    def forward(self, x):
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class _ZeroBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class ZeroBackward(nn.Module):
    """The identity on the way forward; nothing on the way back."""

    def forward(self, x):
        return _ZeroBackward.apply(x)


class Detach(nn.Module):
    """A non-differentiable input stage (a JPEG round trip, an external library): the graph stops here."""

    def forward(self, x):
        return x.detach()


MASKS = {
    "quantise": lambda: Quantise(256),
    "zero-backward": ZeroBackward,
    "detach": Detach,
}


def masked(adapter, kind: str):
    """A copy of the adapter whose network first passes its input through the masking layer `kind`, or (kind
    "softmax") returns probabilities instead of logits."""
    out = copy.deepcopy(adapter)
    if kind == "softmax":
        out.net = nn.Sequential(out.net, nn.Softmax(dim=1))
    else:
        out.net = nn.Sequential(MASKS[kind](), out.net)
    return out
