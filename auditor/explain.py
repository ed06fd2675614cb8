"""Class activation maps and the checks that say whether to trust them.

Maps: CAM (Zhou et al. 2016) where the network ends in global average pooling and a
linear layer; Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018)
from one forward and one backward per batch: captum's
`compute_layer_gradients_and_eval` gives the layer's activations and the gradients of
each row's own target score, and both gradient methods are weighted sums of them. A
"row" is one (image, target) pair, so a detector's boxes or a segmenter's classes become
rows of one batch instead of a loop of backward passes.

Checks: deletion and insertion curves (Petsiuk et al. 2018) beside a random and an edge
(Sobel) map; cascading weight randomisation (Adebayo et al. 2018); the share of the map
inside the object and the pointing game (Zhang et al. 2016) where objects are known.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
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
    from captum._utils.gradient import compute_layer_gradients_and_eval

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
) -> nn.Linear | None:
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
        if (
            isinstance(module, nn.Linear)
            and module.in_features == pooled.shape[1]
            and module.out_features == logits.shape[1]
        ):
            with torch.no_grad():
                if torch.allclose(module(pooled), logits.float(), rtol=1e-3, atol=1e-4):
                    return module
    return None


def class_activation_maps(
    head: nn.Linear,
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


# ---- baselines -------------------------------------------------------------------------------------


def random_maps(n: int, coarse: tuple[int, int], size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform noise as coarse as the CAM itself, upsampled: chance with the same granularity."""
    noise = torch.rand(n, *coarse, generator=generator, device=generator.device)
    return upsample(noise, size)


def sobel_maps(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of the grey image: the "it just finds edges" baseline."""
    grey = x.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernels = torch.stack([kx, kx.t()])[:, None]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    return g.pow(2).sum(dim=1).sqrt()


# ---- faithfulness ----------------------------------------------------------------------------------


def blur_for_insertion(x: torch.Tensor) -> torch.Tensor:
    """The insertion canvas: a Gaussian blur with sigma a tenth of the image side.

    Petsiuk et al. blur with sigma 5 at 224 px; on 28 px digits that leaves the digit
    readable, so sigma scales with the image (22 px at 224) to remove the content at any size.
    """
    from torchvision.transforms.v2.functional import gaussian_blur

    sigma = max(min(x.shape[-2:]) / 10, 0.5)
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(x.shape[-2:]) // 2) - 1)
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def pixel_order(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each pixel's rank in its map, highest first; ties (the zeros a ReLU leaves) in seeded random order."""
    n = maps.shape[0]
    flat = maps.flatten(1).float()
    jitter = torch.rand(flat.shape, generator=generator, device=generator.device).to(flat.device)
    # Scaled below the smallest gap between distinct values, so jitter orders ties only.
    key = normalise(flat.view(n, 1, -1)).view(n, -1) + 1e-6 * jitter
    order = key.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1))
    return ranks.view_as(maps)


@torch.no_grad()
def deletion_insertion(
    prob_fn: ScoreFn,
    x: torch.Tensor,
    maps: dict[str, torch.Tensor],
    steps: int,
    generator: torch.Generator,
    batch_size: int,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"deletion": N x (steps+1), "insertion": N x (steps+1)} curves of each row's score.

    Deletion sets the top-ranked pixels to 0 (black), insertion reveals them on the blurred
    canvas, in `steps` equal shares of the image. All maps and steps go through the model
    in batches of `batch_size` rows.
    """
    n, _, h, w = x.shape
    canvas = blur_for_insertion(x)
    fractions = torch.arange(steps + 1, device=x.device) / steps
    counts = (fractions * h * w).round().long()
    jobs = []  # (map name, mode, step)
    ranks = {name: pixel_order(m, generator).to(x.device) for name, m in maps.items()}
    for name in maps:
        for mode in ("deletion", "insertion"):
            jobs.extend((name, mode, k) for k in range(steps + 1))
    scores = torch.empty(len(jobs), n, device=x.device)

    def image(job, rows):
        name, mode, k = job
        chosen = (ranks[name][rows] < counts[k])[:, None]  # N x 1 x H x W: pixels removed / revealed so far
        if mode == "deletion":
            return torch.where(chosen, torch.zeros_like(x[rows]), x[rows])
        return torch.where(chosen, x[rows], canvas[rows])

    rows_per_job = max(1, batch_size // max(1, n))
    all_rows = torch.arange(n, device=x.device)
    if rows_per_job > 1:  # several whole jobs in one batch
        for start in range(0, len(jobs), rows_per_job):
            group = jobs[start : start + rows_per_job]
            batch = torch.cat([image(j, all_rows) for j in group])
            scores[start : start + len(group)] = prob_fn_rows(prob_fn, batch, n).view(len(group), n)
            progress(len(group))
    else:  # one job in several batches
        for j, job in enumerate(jobs):
            for start in range(0, n, batch_size):
                rows = all_rows[start : start + batch_size]
                scores[j, rows] = prob_fn_rows(prob_fn, image(job, rows), len(rows), rows)
            progress(1)
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in maps}
    for (name, mode, k), row in zip(jobs, scores):
        out[name].setdefault(mode, torch.empty(n, steps + 1, device=x.device))[:, k] = row
    return out


def prob_fn_rows(prob_fn, batch: torch.Tensor, n: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Calls prob_fn on a batch made of whole copies of the rows (or a slice of them)."""
    copies = len(batch) // n
    index = (torch.arange(n, device=batch.device) if rows is None else rows).repeat(copies)
    return prob_fn(batch, index).float()


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each row's curve over [0, 1] (trapezoid rule)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


# ---- sanity check ----------------------------------------------------------------------------------


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
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).cpu().double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).cpu().double().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(
        denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-12), torch.full_like(denominator, float("nan"))
    )


# ---- localisation ----------------------------------------------------------------------------------


def energy_in_object(maps: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Share of each (non-negative) map's mass inside its object mask (N x H x W bool); NaN for an empty map."""
    total = maps.flatten(1).sum(1)
    inside = (maps * objects).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def pointing_hits(maps: torch.Tensor, objects: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Whether each map's maximum lies on its object or within `tolerance` pixels of it (Zhang et al. 2016)."""
    n, h, w = maps.shape
    peak = maps.flatten(1).argmax(dim=1)
    py, px = peak // w, peak % w
    if tolerance > 0:
        objects = F.max_pool2d(objects.float()[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0
    return objects[torch.arange(n, device=maps.device), py, px]


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """K x 4 xyxy boxes in pixels -> K x H x W masks of the pixels whose centres they cover."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=boxes.device).view(1, 1, w) + 0.5
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
