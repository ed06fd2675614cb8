"""Figures the probes save as PNG artifacts; the report inlines them.

Matplotlib runs headless (Agg) and is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def to_display(image: torch.Tensor):
    """C x H x W in [0, 1] -> (array for imshow, cmap)."""
    image = image.detach().float().clamp(0, 1).cpu()
    if image.shape[0] == 1:
        return image[0].numpy(), "gray"
    return image.permute(1, 2, 0).numpy(), None


def save_tile_grid(tiles: torch.Tensor, path: Path, *, tile_px: int = 40, nrow: int | None = None) -> None:
    """N x C x H x W tiles in [0, 1] as one PNG, upscaled with nearest-neighbour so small kernels stay crisp."""
    import math

    from PIL import Image
    from torchvision.utils import make_grid

    n, _, h, w = tiles.shape
    scale = max(1, tile_px // max(h, w))
    big = torch.nn.functional.interpolate(tiles.float(), scale_factor=scale, mode="nearest")
    nrow = nrow or math.ceil(math.sqrt(n))
    grid = make_grid(big, nrow=nrow, padding=2, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
