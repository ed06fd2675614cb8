"""The sanity check of Adebayo et al. (2018): cascading weight randomisation.

The network's learned layers are re-initialised from the top down, the maps recomputed at
each stage and compared with the trained model's by rank correlation: maps that show what
the model learned fall apart; maps that survive show the input, not the model.
"""

from __future__ import annotations

import torch
from torch import nn


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
