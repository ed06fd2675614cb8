"""The hidden layers actmax shows: which module's output holds a conv's channels, and hooks that read them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@contextmanager
def reading(net: nn.Module, units: list):
    """Forward hooks that keep each unit's latest output under the unit's name; removed on exit."""
    modules = dict(net.named_modules())
    acts: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            acts[name] = output

        return hook

    handles = [modules[u.hook].register_forward_hook(keep(u.name)) for u in units]
    try:
        yield acts
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Unit:
    """A layer whose channels can be shown: what the user names, and the module whose output is read."""

    name: str
    hook: str
    shape: tuple[int, int, int]  # C x H x W on the canvas
    kind: str  # "normed": a conv read after its normalisation layer; "conv": a bare conv; "head": a conv of an
    # ultralytics output head; "other": any other module


def layer_units(net: nn.Module, example: torch.Tensor) -> dict[str, Unit]:
    """Every module with an N x C x H x W output on the canvas, convs first, each in execution order.

    A conv followed by a normalisation layer (conv-BN-ReLU blocks, ultralytics' Conv) is read
    at the normalisation's output, before the activation: the raw conv output would be
    ascended against the channel wherever the norm's scale is negative, and after a ReLU a
    channel that starts switched off has no gradient at all. Convs without a norm (output
    heads among them) are kind "conv"; defaults come from the "normed" ones when there are any.
    An ultralytics model ends in its head (Detect, Segment, ...: the last block of `net.model`),
    whose convs turn the neck's features into boxes and class scores; they are kind "head",
    so that the deepest default layer is the neck's last.
    """
    if isinstance(net, torch.jit.ScriptModule):
        return {}  # TorchScript modules take no forward hooks
    h, w = example.shape[-2:]
    outputs: dict[str, torch.Tensor] = {}
    convs: list[str] = []
    produced: dict[int, str] = {}  # id of a conv's output -> that conv
    norm_after: dict[str, str] = {}

    def hook(name):
        def record(module, inputs, output):
            outputs[name] = output  # kept alive, so ids in `produced` stay unique
            if isinstance(module, nn.Conv2d) and name not in convs:
                convs.append(name)
                produced[id(output)] = name
            # BatchNorm2d, torchvision's FrozenBatchNorm2d, GroupNorm, ... applied to a conv's output
            elif "Norm" in type(module).__name__ and inputs and id(inputs[0]) in produced:
                norm_after.setdefault(produced[id(inputs[0])], name)

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in net.named_modules() if name]
    try:
        with torch.no_grad():
            net(example)
    except RuntimeError as exc:  # a canvas the model cannot take (a detector's stride must divide it)
        raise ValueError(f"size: the model does not run on a {h}x{w} canvas: {exc}".splitlines()[0]) from exc
    finally:
        for handle in handles:
            handle.remove()

    head = _ultralytics_head(net)
    units = {}
    for conv in convs:
        read = norm_after.get(conv, conv)
        if _spatial(outputs.get(read), h, w):
            kind = "head" if head and conv.startswith(head) else "normed" if read != conv else "conv"
            units[conv] = Unit(conv, read, tuple(outputs[read].shape[1:]), kind)
    for name in outputs:
        if name not in units and _spatial(outputs[name], h, w):
            units[name] = Unit(name, name, tuple(outputs[name].shape[1:]), "other")
    return units


def _spatial(t, h: int, w: int) -> bool:
    """An N x C x H x W output at least 2 px a side and no larger than the canvas."""
    return (
        isinstance(t, torch.Tensor)
        and t.dim() == 4
        and 2 <= min(t.shape[-2:])
        and t.shape[-2] <= h
        and t.shape[-1] <= w
    )


def _ultralytics_head(net: nn.Module) -> str | None:
    """The module-name prefix of an ultralytics model's head (the last block of `net.model`), or None."""
    blocks = getattr(net, "model", None)
    return f"model.{len(blocks) - 1}." if isinstance(blocks, nn.Sequential) and hasattr(net, "stride") else None


def spread(width: int, k: int) -> list[int]:
    """k channel indices evenly spaced over 0..width-1 (all of them when k >= width)."""
    if k >= width:
        return list(range(width))
    return sorted({round(i * (width - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def has_convs(net: nn.Module) -> bool:
    """Whether the net has a conv module to hook (TorchScript and exported graphs keep none)."""
    return any(isinstance(m, nn.Conv2d) for m in net.modules())
