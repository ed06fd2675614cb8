"""Maps from the input, for models with no layer to tap: captum's model-agnostic attributions.

A TorchScript model whose graph cannot be converted, or a model with no spatial layer, still
has an input and a score per row: Integrated Gradients (Sundararajan et al. 2017; black
baseline), SmoothGrad (Smilkov et al. 2017; captum's NoiseTunnel over the plain gradient) or
Occlusion (Zeiler & Fergus 2014) attribute that score to the pixels. A row's attribution is
summed over the colour channels, kept where it is evidence for the score (IG and occlusion:
the positive part; SmoothGrad: the magnitude, its sign means nothing) and smoothed with a
Gaussian a 28th of the image side (one pixel on 28-pixel digits), so that the map shows
regions as a CAM does rather than single pixels. Rows go through captum in batches: the
row's target (class, box, mask) is an additional forward argument, which captum repeats
with the inputs it expands.

Occlusion is the default: it needs no gradient (a scripted model may have none worth
reading), and on the project's checks it is the one that does all three things asked of a
map. On digits-cnn as TorchScript (33 rows), deletion/insertion AUC: occlusion 0.147/0.753,
SmoothGrad 0.192/0.674, IG 0.162/0.729, random 0.332/0.465; randomisation similarity 0.49,
0.49 and 0.97 (IG's maps show the input); a planted corner mark (tests/planted_shortcut.py)
holds 79% of the marked class's occlusion mass (IG 55%, SmoothGrad 21%: not flagged).
Its cost: about 170 forwards per row, where SmoothGrad and IG take 16 forward+backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from torchvision.transforms.v2.functional import gaussian_blur

from auditor.targets import Targets, chunks

INPUT_METHODS = ("ig", "smoothgrad", "occlusion")
SMOOTHGRAD_NOISE = 0.15  # SmoothGrad's noise, a share of the [0, 1] pixel range (Smilkov et al. suggest 10-20%)
COARSE = 4  # the random baseline's cells are this many pixels a side (the smoothed maps' grain)


def input_maps(
    adapter,
    x: torch.Tensor,
    t: Targets,
    method: str,
    samples: int,
    batch_size: int,
    progress: Callable[[int], object],
) -> torch.Tensor:
    """rows x H x W non-negative maps: each row's score attributed to the input pixels, smoothed.

    `samples` is IG's interpolation steps, SmoothGrad's noisy copies; occlusion's window is a
    seventh of the image side, moved by half of it.
    """
    parts = []
    # Each expanded batch holds `samples` copies of the rows, so the rows per batch shrink to keep the model's
    # batch near batch_size.
    rows_per_batch = max(1, batch_size // samples) if method != "occlusion" else batch_size
    for s in chunks(len(t), rows_per_batch):
        sub = t.take(s)
        with torch.enable_grad():
            attr = _attribute(adapter, x[sub.image].detach(), sub, method, samples, batch_size)
        parts.append(_as_map(attr.detach().float(), method))
        progress(s.stop - s.start)
    return torch.cat(parts) if parts else x.new_zeros(0, *x.shape[-2:])


def coarse_of(maps: torch.Tensor) -> torch.Tensor:
    """The maps averaged over COARSE-pixel cells: what the random baseline matches in grain."""
    h, w = maps.shape[-2:]
    return F.adaptive_avg_pool2d(maps[:, None], (max(1, h // COARSE), max(1, w // COARSE)))[:, 0]


def _attribute(adapter, x: torch.Tensor, rows: Targets, method: str, samples: int, batch_size: int) -> torch.Tensor:
    def score(batch, cls, anchor, box, mask):
        return Targets(image=cls.new_zeros(0), cls=cls, role=[], anchor=anchor, box=box, mask=mask).scores(
            adapter, adapter(batch)
        )

    args = (rows.cls, rows.anchor, rows.box, rows.mask)
    if method == "ig":
        return IntegratedGradients(score).attribute(
            x, baselines=torch.zeros_like(x), additional_forward_args=args, n_steps=samples
        )
    if method == "smoothgrad":
        return NoiseTunnel(Saliency(score)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
            stdevs=SMOOTHGRAD_NOISE,
            additional_forward_args=args,
            abs=False,
        )
    if method == "occlusion":
        side = max(2, min(x.shape[-2:]) // 7)
        stride = max(1, side // 2)
        return Occlusion(score).attribute(
            x,
            sliding_window_shapes=(x.shape[1], side, side),
            strides=(x.shape[1], stride, stride),
            baselines=0.0,
            additional_forward_args=args,
            perturbations_per_eval=max(1, batch_size // len(x)),
        )
    raise ValueError(f"unknown input attribution {method}")


def _as_map(attr: torch.Tensor, method: str) -> torch.Tensor:
    summed = attr.sum(dim=1)
    m = summed.abs() if method == "smoothgrad" else summed.clamp_min(0)
    sigma = max(min(m.shape[-2:]) / 28, 0.5)
    kernel = min(2 * int(3 * sigma) + 1, 2 * (min(m.shape[-2:]) // 2) - 1)
    return gaussian_blur(m[:, None], [kernel, kernel], [sigma, sigma])[:, 0].clamp_min(0)
