"""Class activation maps: the engine that gradcam explains with and patch shows its effect through.

CAM (Zhou et al. 2016) where the network ends in global average pooling and a linear
layer; Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) from
one forward and one backward per batch: captum's `compute_layer_gradients_and_eval`
gives the layer's activations and the gradients of each row's own target score, and both
gradient methods are weighted sums of them. A "row" is one (image, target) pair
(auditor.targets), so a detector's boxes or a segmenter's classes become rows of one
batch instead of a loop of backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from captum._utils.gradient import compute_layer_gradients_and_eval
from torch import nn

METHODS = ("cam", "gradcam", "gradcam++")
ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # rows of images -> one score per row


def cam_maps(
    score_fn: ScoreFn, layers: Sequence[nn.Module], x: torch.Tensor, methods: Sequence[str] = ("gradcam", "gradcam++")
) -> dict[str, torch.Tensor]:
    """method -> N x h x w maps (ReLU applied, not normalised) at the first layer's resolution.

    One forward and one backward for the whole batch: score_fn(x) returns each row's target
    score, and its gradient reaches every layer at once. With several layers (a detector's
    feature pyramid) each layer's map is resized to the first one's size and the maps are
    summed; a box's score depends on one level only, so the others add zeros.
    """
    # The input asks for a graph so that frozen weights (requires_grad False) still leave one to the layer;
    # autograd stops at the layer, so nothing is computed for the input itself.
    with torch.enable_grad():
        grads, evals = compute_layer_gradients_and_eval(score_fn, list(layers), x.detach().requires_grad_(True))
    out: dict[str, torch.Tensor] = {}
    for method in methods:
        total = None
        for (g,), (a,) in zip(grads, evals):
            m = _gradient_cam(method, g.detach().float(), a.detach().float())
            total = m if total is None else total + _resize(m, total.shape[-2:])
        out[method] = total
    return out


def _gradient_cam(method: str, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    if method == "gradcam":
        weights = g.mean(dim=(2, 3), keepdim=True)
    elif method == "gradcam++":
        # The closed form of Chattopadhay et al. (their eq. 19, exponential score):
        # alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)).
        g2, g3 = g * g, g * g * g
        denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * g.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    else:
        raise ValueError(f"unknown gradient method {method}")
    # captum's LayerGradCam leaves the ReLU to the caller (relu_attributions=False by default).
    return (weights * a).sum(dim=1).clamp_min(0)


def gap_linear_head(
    net: nn.Module, layer: nn.Module, example: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]
) -> nn.Module | None:
    """The linear layer that reads the global average of `layer`'s output and gives the logits, if any.

    Checked on an example rather than by architecture names: the layer's output, averaged
    over space and passed through the candidate, must reproduce the model's output.
    """
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    try:
        with torch.no_grad():
            logits = forward(example)
    finally:
        handle.remove()
    a = seen.get("a")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not isinstance(a, torch.Tensor) or a.dim() != 4:
        return None
    pooled = a.float().mean(dim=(2, 3))
    for module in net.modules():
        # Any module holding an out x in weight, not only nn.Linear: an exported graph's head is a graph module.
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor) and tuple(weight.shape) == (logits.shape[1], pooled.shape[1]):
            with torch.no_grad():
                head = F.linear(pooled, weight.float(), bias.float() if isinstance(bias, torch.Tensor) else None)
            if torch.allclose(head, logits.float(), rtol=1e-3, atol=1e-4):
                return module
    return None


def class_activation_maps(
    head: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """CAM: the head's weights for each row's class over the layer's channels (no gradient needed)."""
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    try:
        with torch.no_grad():
            forward(x)
    finally:
        handle.remove()
    w = head.weight.detach()[classes].float()  # N x C
    return torch.einsum("nc,nchw->nhw", w, seen["a"].float()).clamp_min(0)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x h x w -> N x H x W, bilinear (captum's LayerAttribution.interpolate does the same)."""
    return _resize(maps, size)


def _resize(maps: torch.Tensor, size) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own maximum (maps are non-negative); all-zero maps stay zero."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return maps / peak
