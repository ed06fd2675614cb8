"""Layers to hook in models that ship as graphs: torch.export programs (.pt2) and TorchScript.

Grad-CAM reads a layer's activations and gradients through forward hooks. An exported
program's `.module()` is one flat graph: its weights are attributes, no submodule runs, so no
hook fires. `torch.export.unflatten` rebuilds the module hierarchy of the original model,
with the original names (`features.4`, `layer4`), and each submodule is called again, so
hooks work exactly as on the eager model. A graph node can be tapped too (`relu_2`): an
identity module is spliced in after it, and hooks fire on that.

TorchScript modules refuse hooks. PyTorch's TorchScript-to-export converter
(`torch._export.converter.TS2EPConverter`, private but shipped since 2.4) turns a scripted
or traced model into an exported program, which is then unflattened as above; the
converted graph is used only where it reproduces the TorchScript model's outputs.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from auditor.errors import first_line

AGREE_ATOL = 1e-4  # a converted graph must reproduce the original's outputs to this (relative to their scale)


class FlatGraph(nn.Module):
    """A flat exported graph as a module: train()/eval() are no-ops (the graph refuses them; it was exported in the
    mode it runs in)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True):
        return self

    def forward(self, x):
        return self.graph(x)


def hierarchical(program: torch.export.ExportedProgram) -> tuple[nn.Module, str | None]:
    """The program with its module hierarchy (unflattened), or the flat graph and why not."""
    try:
        return torch.export.unflatten(program), None
    except Exception as exc:  # programs exported without the module call signatures, or newer graph features
        return FlatGraph(program.module()), f"the module hierarchy could not be rebuilt ({first_line(exc)})"


def from_torchscript(
    net: torch.jit.ScriptModule, example: torch.Tensor
) -> tuple[torch.export.ExportedProgram | None, str | None]:
    """The TorchScript model converted to an exported program, or None and why not.

    `example` is a batch of at least 2 inputs (normalised as the model takes them): the program must
    reproduce the TorchScript model's outputs on it.
    """
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as exc:
        return None, f"this PyTorch has no TorchScript converter ({first_line(exc)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = TS2EPConverter(net, (example,)).convert()
            with torch.no_grad():
                want, got = net(example), program.module()(example)
    except Exception as exc:
        return None, f"the TorchScript graph could not be converted to a hookable one ({first_line(exc)})"
    if not _agree(want, got):
        return None, "the converted graph does not reproduce the TorchScript model's outputs"
    return program, None


def _agree(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False
        scale = a.abs().max().clamp_min(1.0)
        return bool(((a - b).abs().max() / scale) <= AGREE_ATOL)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return all(_agree(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(_agree(a[k], b[k]) for k in a)
    return False


class _Tap(nn.Identity):
    """Spliced in after a graph node: hooks on it see the node's output and the gradient flowing back to it."""


def node_names(program: torch.export.ExportedProgram) -> list[str]:
    """The flat program's nodes that compute something (what `gradcam.layer=` may name besides modules)."""
    return [n.name for n in program.graph_module.graph.nodes if n.op == "call_function"]


def tap_nodes(program: torch.export.ExportedProgram, names: list[str] | None = None) -> FlatGraph:
    """The flat program with an identity module spliced in after each named node (all nodes with a 4-D output when
    `names` is None); each tap is the FlatGraph's submodule `graph.<node name>`, so hooks find it by that name."""
    flat = program.module()
    nodes = {n.name: n for n in flat.graph.nodes if n.op == "call_function"}
    if names is None:
        names = [name for name, n in nodes.items() if getattr(n.meta.get("val"), "ndim", 0) == 4]
    missing = [n for n in names if n not in nodes]
    if missing:
        raise KeyError(missing[0])
    for name in names:
        if hasattr(flat, name):  # a node named like one of the graph's own attributes: not tappable by its name
            raise KeyError(name)
        flat.add_submodule(name, _Tap())
        node = nodes[name]
        with flat.graph.inserting_after(node):
            tapped = flat.graph.call_module(name, (node,))
        node.replace_all_uses_with(tapped, delete_user_cb=lambda user, tapped=tapped: user is not tapped)
    flat.recompile()
    return FlatGraph(flat)
