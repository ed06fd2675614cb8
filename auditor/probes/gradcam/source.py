"""Where gradcam's maps come from: a layer of the model, or, where no layer can be tapped, the input.

- Eager models: their modules (the last spatial block, or `gradcam.layer=`).
- Exported programs (.pt2): the same module names, on the unflattened program; a name that is
  no module may be one of the flat graph's nodes (`relu_2`), tapped (auditor.models.graphs).
- TorchScript: converted to an exported program and unflattened where PyTorch's converter can
  and the result reproduces the model's outputs; its layers are then hooked on that twin,
  while every score is still read from the TorchScript model itself.
- Otherwise (no convertible graph, no spatial layer, or `gradcam.source=input`): captum's
  model-agnostic attributions from the input (auditor.probes.gradcam.input_maps).

The report says which ran and why (Source.why).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from auditor.errors import did_you_mean
from auditor.models.graphs import from_torchscript, hierarchical, node_names, tap_nodes

SOURCES = ("auto", "layer", "input")


@dataclass
class Source:
    adapter: nn.Module  # whose layers are hooked and randomised: the audited adapter, or a hookable twin of it
    layers: list[tuple[str, str]]  # (name shown, module path in adapter.net); empty: maps from the input
    why: str  # one sentence for the report

    @property
    def from_input(self) -> bool:
        return not self.layers

    def modules(self, adapter: nn.Module | None = None) -> list[nn.Module]:
        """The layers' modules in `adapter` (a copy of self.adapter, e.g. a randomised one), by path."""
        found = dict((adapter or self.adapter).net.named_modules())
        return [found[path] for _, path in self.layers]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.layers]


def choose_source(adapter, asked: str, layer_names: tuple[str, ...]) -> Source:
    """The source of the maps for this model (see the module's docstring); ValueError for a usage error."""
    if asked == "input":
        return Source(adapter, [], "maps from the input, as asked (gradcam.source=input)")
    hookable, program, converted = adapter, adapter.program, ""
    if isinstance(adapter.net, torch.jit.ScriptModule):
        program, why = from_torchscript(adapter.net, adapter.normalize(adapter.example_input(2)))
        if program is None:
            if asked == "layer" or layer_names:
                raise ValueError(
                    f"layer: TorchScript model: {why}; leave gradcam.layer unset to explain from the input"
                )
            return Source(adapter, [], f"maps from the input: TorchScript model, and {why}")
        hookable = with_net(adapter, hierarchical(program)[0])
        converted = "TorchScript graph converted to an exported program (torch._export.converter), "
    try:
        hookable, layers = _layers(hookable, program, list(layer_names))
    except ValueError as exc:  # nothing spatial to tap
        if asked == "layer" or layer_names:
            raise
        return Source(adapter, [], f"maps from the input: {str(exc).removeprefix('layer: ')}")
    paths = _paths(hookable.net, [m for _, m in layers])
    shown = [n.removeprefix("graph.") for n, _ in layers]
    what = "graph node" if layers[0][0].startswith("graph.") else "layer"
    what += "s" if len(layers) > 1 else ""
    return Source(hookable, list(zip(shown, paths)), f"{converted}maps from {what} {', '.join(shown)}")


def with_net(adapter, net: nn.Module):
    """A shallow copy of the adapter that runs `net` (same normalisation, classes, task) and shares the rest."""
    twin = copy.copy(adapter)
    twin._modules = dict(adapter._modules)  # nn.Module keeps submodules in a dict the copy would share
    twin.net = net
    twin._cam_layers = None
    return twin


def _layers(adapter, program, names: list[str]) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """The adapter to hook and its layers: modules by name (or the last spatial block); graph nodes, tapped, where
    the names are nodes or where no module runs as a module (a converted graph that inlines its submodules)."""
    modules = [n for n, _ in adapter.net.named_modules() if n]
    nodes = node_names(program) if program is not None else []
    if names and all(n in modules for n in names):
        adapter.set_cam_layers(names)
        if _fire(adapter):
            return adapter, adapter.cam_layers
        if program is None:
            raise ValueError(f"layer: {', '.join(names)} never runs as a module")
        names = []  # modules that never run: fall through to the graph's nodes
    elif names and not all(n in nodes for n in names):
        missing = next(n for n in names if n not in modules and n not in nodes)
        known = modules + nodes
        raise ValueError(
            f"layer: the model has no module or graph node {missing}{did_you_mean(missing, known)}; "
            f"e.g. {', '.join(known[-3:])}"
        )
    elif not names:
        try:
            layers = adapter.cam_layers
            if _fire(adapter):
                return adapter, layers
        except ValueError:
            if program is None:
                raise
    if program is None:
        raise ValueError("layer: the model has no module with a spatial output")
    tapped = with_net(adapter, tap_nodes(program, names or None))
    if names:
        tapped.set_cam_layers([f"graph.{n}" for n in names])
    return tapped, tapped.cam_layers


def _fire(adapter) -> bool:
    """Whether every cam layer's forward hook fires on an example (a converted graph may own a module it never
    calls)."""
    fired: set[int] = set()
    handles = [m.register_forward_hook(lambda m, _i, _o: fired.add(id(m))) for _, m in adapter.cam_layers]
    try:
        with torch.no_grad():
            adapter(adapter.example_input(2))
    finally:
        for h in handles:
            h.remove()
    return all(id(m) in fired for _, m in adapter.cam_layers)


def _paths(net: nn.Module, modules: list[nn.Module]) -> list[str]:
    where = {id(m): n for n, m in net.named_modules()}
    return [where[id(m)] for m in modules]
