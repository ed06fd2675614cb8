"""The sanity check of Adebayo et al. (2018): cascading weight randomisation.

The network's learned layers are re-initialised from the top down, the maps recomputed at
each stage and compared with the trained model's by rank correlation: maps that show what
the model learned fall apart; maps that survive show the input, not the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditor.probes.gradcam.details import Stage
from auditor.probes.gradcam.figures import LABELS
from auditor.results import Finding
from auditor.tasks import Task

SIMILAR = 0.5  # mean rank correlation at or above which randomised maps count as unchanged


def parametrised_layers(net: nn.Module, example: torch.Tensor, forward) -> list[tuple[str, nn.Module]]:
    """Modules with their own weights, in the order they run, so the top comes last.

    The order comes from forward hooks; TorchScript takes none, so there it is the order the modules
    were defined in, and a flat exported graph calls no module, so there it is the order its weights
    are read in.
    """
    if isinstance(net, torch.jit.ScriptModule):
        return [(n, m) for n, m in net.named_modules() if _owns_parameters(m)]
    order: list[tuple[str, nn.Module]] = []
    handles = []
    for name, module in net.named_modules():
        if _owns_parameters(module):
            handles.append(
                module.register_forward_hook(
                    lambda m, _i, _o, name=name: order.append((name, m)) if all(m is not o for _, o in order) else None
                )
            )
    try:
        with torch.no_grad():
            forward(example)
    finally:
        for h in handles:
            h.remove()
    return order or _in_graph_order(net)


def _learned(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return not params or any(p.requires_grad for p in params)


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _in_graph_order(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules holding a flat fx graph's weights, in the order the graph first uses them (its get_attr nodes
    all come first). A converted TorchScript graph may hold its weights as buffers: they count too."""
    path = {id(m): n for n, m in net.named_modules()}
    used: list[tuple[int, str, nn.Module]] = []
    for graph in (m for m in net.modules() if isinstance(m, torch.fx.GraphModule)):
        position = {node: i for i, node in enumerate(graph.graph.nodes)}
        for node in graph.graph.nodes:
            if node.op == "get_attr":
                owner = graph.get_submodule(node.target.rpartition(".")[0])
                first = min((position[u] for u in node.users), default=len(position))
                used.append((first, path[id(owner)], owner))
    order: list[tuple[str, nn.Module]] = []
    for _, name, owner in sorted(used, key=lambda u: u[0]):
        if owner is not net and all(owner is not o for _, o in order):
            order.append((name, owner))
    return order


def randomise(module: nn.Module, generator_seed: int) -> None:
    """Fresh initial weights for one module, drawn as its own constructor would draw them.

    Modules of exported graphs and TorchScript have no reset_parameters: their weights are drawn as
    PyTorch's layers draw theirs (Kaiming-uniform weights, biases uniform within 1/sqrt(fan-in)), in the
    same order, so an exported model randomises exactly as its eager source does.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            _reset_like_pytorch(module)
        buffers = dict(module.named_buffers(recurse=False))
        if "running_mean" in buffers and "running_var" in buffers:
            # Fresh BN statistics are the identity; random ones change the map like any other layer.
            with torch.no_grad():
                weight = getattr(module, "weight", None)
                weight.normal_(1.0, 0.5) if weight is not None else None
                buffers["running_mean"].normal_(0.0, 0.5)
                buffers["running_var"].uniform_(0.5, 2.0)


def _reset_like_pytorch(module: nn.Module) -> None:
    buffers = dict(module.named_buffers(recurse=False))
    params = {**buffers, **dict(module.named_parameters(recurse=False))}  # converted graphs keep weights as buffers
    params = {k: v for k, v in params.items() if k not in ("running_mean", "running_var", "num_batches_tracked")}
    weight, bias = params.get("weight"), params.get("bias")
    with torch.no_grad():
        if "running_mean" in buffers and "running_var" in buffers:  # a norm layer, as _NormBase.reset_parameters
            buffers["running_mean"].zero_()
            buffers["running_var"].fill_(1)
            weight.fill_(1) if weight is not None else None
            bias.zero_() if bias is not None else None
            return
        if weight is not None and weight.dim() >= 2:  # convolutions and linear layers
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(bias, -bound, bound)
            return
        for p in params.values():
            nn.init.normal_(p, std=0.02)


def cascade_stages(n_layers: int, stages: int) -> list[int]:
    """How many top layers each stage randomises: the top one alone first, all of them last."""
    if stages <= 1 or n_layers <= 1:
        return [n_layers]
    return sorted({round(1 + (n_layers - 1) * k / (stages - 1)) for k in range(stages)})


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho per row (average ranks for ties); NaN where a map is constant."""
    # scipy comes with scikit-learn; scipy.stats takes 0.4 s to import, which every CLI call would pay
    # (the registry imports each probe), so it is fetched here, where it is used.
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).cpu().double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).cpu().double().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(
        denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-12), torch.full_like(denominator, float("nan"))
    )


# ---- the cascade ------------------------------------------------------------------------------------------


@dataclass
class Cascade:
    """Each stage's result and its maps (coarse, one per row), and the mean similarity over the stages."""

    stages: list[Stage]
    maps: list[torch.Tensor]
    mean: float | None  # None when no learned weight could be reached, and nothing was randomised


def learned_layers(adapter, task: Task) -> list[list[tuple[str, nn.Module]]]:
    """Learned layers in the order they run, grouped into the units the cascade randomises
    (Task.randomised_group: single layers, or an ultralytics detector's blocks)."""
    layers = parametrised_layers(adapter.net, adapter.normalize(adapter.example_input(2)), adapter.net)
    # Fixed tensors (YOLO's DFL projection) are part of the decoding, not learned: left alone. (Weights held as
    # buffers, as in converted TorchScript graphs, cannot say so, and count as learned.)
    layers = [(n, m) for n, m in layers if _learned(m)]
    groups: dict[str, list] = {}
    for name, module in layers:
        groups.setdefault(task.randomised_group(name), []).append((name, module))
    return list(groups.values())


def randomisation(
    adapter,
    learned: list[list[tuple[str, nn.Module]]],
    maps_of: Callable[[nn.Module], torch.Tensor],
    original: torch.Tensor,
    stages: list[int],
    seed: int,
) -> Cascade:
    """Adebayo et al.'s cascade: randomise the top k learned units, recompute the maps (`maps_of` the adapter),
    compare ranks.

    The weights are randomised in place and put back after each stage, rather than on a deep copy:
    unflattened exported programs cannot be deep-copied (their graphs hold symbolic shapes), and a copy of a
    large model costs its size again.
    """
    results, maps_of_stage = [], []
    for k in stages:
        top = [module for group in learned[-k:] for _, module in group]
        saved = [_weights(m) for m in top]
        try:
            for j, module in enumerate(top):
                randomise(module, seed * 7919 + j)
            maps = maps_of(adapter)
        finally:
            with torch.no_grad():
                for weights in saved:
                    for tensor, value in weights:
                        tensor.copy_(value)
        rho = rank_correlation(original, maps)
        finite = rho[~torch.isnan(rho)]
        results.append(
            Stage(
                layers=learned[-k][0][0].removeprefix("graph.") if k < len(learned) else "all",
                top=k,
                similarity=float(finite.mean()) if len(finite) else 0.0,
            )
        )
        maps_of_stage.append(maps)
    return Cascade(results, maps_of_stage, float(np.mean([r.similarity for r in results])))


def _weights(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A module's own parameters and buffers, each with a copy of its value."""
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return [(t, t.detach().clone()) for t in own]


def sanity_findings(cascade: Cascade, method: str, unit: str) -> tuple[list[Finding], bool]:
    """The check's finding, and whether it makes the maps untrustworthy; `unit` words what is randomised."""
    label, sim = LABELS[method], cascade.mean
    if sim is None:
        text = "the randomisation check did not run: no learned weight of this model could be reached to re-initialise"
        return [Finding("info", text)], False
    if sim >= SIMILAR:
        finding = Finding(
            "high",
            f"{label} maps barely change when the weights are randomised "
            f"(mean rank correlation {sim:.2f} over {len(cascade.stages)} stages): "
            "they show the input, not what the model learned (Adebayo et al. 2018)",
            key=True,
        )
        return [finding], True
    finding = Finding(
        "info",
        f"sanity check passed: randomising the top {unit} alone brings the rank "
        f"correlation with the original maps to {cascade.stages[0].similarity:.2f}, all "
        f"stages average {sim:.2f} (maps depend on the learned weights)",
    )
    return [finding], False
