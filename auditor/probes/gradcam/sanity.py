"""The sanity check of Adebayo et al. (2018): cascading weight randomisation.

The network's learned layers are re-initialised from the top down, the maps recomputed at
each stage and compared with the trained model's by rank correlation: maps that show what
the model learned fall apart; maps that survive show the input, not the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditor.probes.gradcam.details import Stage
from auditor.probes.gradcam.figures import LABELS
from auditor.probes.gradcam.maps import row_maps
from auditor.results import Finding
from auditor.targets import Targets
from auditor.tasks import Task

SIMILAR = 0.5  # mean rank correlation at or above which randomised maps count as unchanged


def parametrised_layers(net: nn.Module, example: torch.Tensor, forward) -> list[tuple[str, nn.Module]]:
    """Modules with their own weights, in the order they run (hooks), so the top comes last."""
    order: list[tuple[str, nn.Module]] = []
    handles = []
    for name, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
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
    return order


def randomise(module: nn.Module, generator_seed: int) -> None:
    """Fresh initial weights for one module, drawn as its own constructor would draw them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                nn.init.normal_(p.data, std=0.02)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Fresh BN statistics are the identity; random ones change the map like any other layer.
            with torch.no_grad():
                module.weight.normal_(1.0, 0.5) if module.weight is not None else None
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)


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
    mean: float


def learned_layers(adapter, task: Task) -> list[list[tuple[str, nn.Module]]]:
    """Learned layers in the order they run, grouped into the units the cascade randomises
    (Task.randomised_group: single layers, or an ultralytics detector's blocks)."""
    layers = parametrised_layers(adapter.net, adapter.normalize(adapter.example_input(2)), adapter.net)
    # Fixed tensors (YOLO's DFL projection) are part of the decoding, not learned: left alone.
    layers = [(n, m) for n, m in layers if any(p.requires_grad for p in m.parameters(recurse=False))]
    groups: dict[str, list] = {}
    for name, module in layers:
        groups.setdefault(task.randomised_group(name), []).append((name, module))
    return list(groups.values())


def randomisation(
    adapter,
    learned: list[list[tuple[str, nn.Module]]],
    layer_names: list[str],
    x: torch.Tensor,
    t: Targets,
    original: torch.Tensor,
    method: str,
    stages: list[int],
    seed: int,
    batch_size: int,
    progress: Callable[[int], object],
) -> Cascade:
    """Adebayo et al.'s cascade: randomise the top k learned units of a copy, recompute the maps, compare ranks."""
    results, maps_of = [], []
    for k in stages:
        twin = copy.deepcopy(adapter)
        twin_modules = dict(twin.net.named_modules())
        top = [layer for group in learned[-k:] for layer in group]
        for j, (name, _) in enumerate(top):
            randomise(twin_modules[name], seed * 7919 + j)
        twin_layers = [twin_modules[n] for n in layer_names]
        maps = row_maps(twin, twin_layers, x, t, [method], batch_size, progress)[method]
        rho = rank_correlation(original, maps)
        finite = rho[~torch.isnan(rho)]
        results.append(
            Stage(
                layers=learned[-k][0][0] if k < len(learned) else "all",
                top=k,
                similarity=float(finite.mean()) if len(finite) else 0.0,
            )
        )
        maps_of.append(maps)
        del twin
    return Cascade(results, maps_of, float(np.mean([r.similarity for r in results])))


def sanity_findings(cascade: Cascade, method: str, unit: str) -> tuple[list[Finding], bool]:
    """The check's finding, and whether it makes the maps untrustworthy; `unit` words what is randomised."""
    label, sim = LABELS[method], cascade.mean
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
