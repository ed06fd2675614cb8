"""Figures the probes save as PNG artifacts; the report inlines them.

Matplotlib runs headless (Agg) and is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


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


def save_tile_grid(
    tiles: torch.Tensor,
    path: Path,
    *,
    tile_px: int = 40,
    nrow: int | None = None,
    labels: list[str] | None = None,
    frames: list[tuple[int, int, int] | None] | None = None,
) -> None:
    """N x C x H x W tiles in [0, 1] as one PNG, upscaled with nearest-neighbour so small kernels stay crisp.

    labels: a short text under each tile; frames: an RGB colour (or None) per tile, drawn as a
    border around the tile so that marking a tile never hides any of its pixels.
    """

    n, _, h, w = tiles.shape
    scale = max(1, tile_px // max(h, w))
    big = torch.nn.functional.interpolate(tiles.float(), scale_factor=scale, mode="nearest").expand(-1, 3, -1, -1)
    pixels = (big.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    pad, border, text_h = 2, 3 if frames else 0, 12 if labels else 0
    tw, th = w * scale + 2 * border, h * scale + 2 * border
    nrow = nrow or math.ceil(math.sqrt(n))
    canvas = Image.new("RGB", (pad + nrow * (tw + pad), pad + math.ceil(n / nrow) * (th + text_h + pad)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=10)
    for i in range(n):
        x, y = pad + (i % nrow) * (tw + pad), pad + (i // nrow) * (th + text_h + pad)
        if frames and frames[i]:
            draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=tuple(frames[i]))
        canvas.paste(Image.fromarray(pixels[i]), (x + border, y + border))
        if labels:
            draw.text((x + tw / 2, y + th + 1), labels[i], fill="black", font=font, anchor="mt")
    canvas.save(path)


def overlay_mask(image: torch.Tensor, mask: torch.Tensor, num_classes: int, alpha: float = 0.7):
    """Class colours over a dimmed grey copy of the image, so mask colours never mix with the scene's own."""

    plt = pyplot()
    arr, _ = to_display(image)
    grey = arr if arr.ndim == 2 else arr.mean(axis=2)
    rgb = np.repeat((0.25 + 0.5 * grey)[..., None], 3, axis=2)
    colours = plt.get_cmap("tab10")(np.arange(max(num_classes, 1)) % 10)[:, :3]
    m = mask.cpu().numpy().astype(int)
    fg = (m > 0) & (m < num_classes)
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[m[fg]]
    rgb[m == 255] = 0.5 * rgb[m == 255]  # ignored pixels dimmed
    return rgb


def draw_boxes(ax, boxes: dict, names) -> None:
    """Rectangles in class colours (tab10), with the class name; instance masks ("masks", at any grid) outlined."""
    from matplotlib.patches import Rectangle

    colours = pyplot().get_cmap("tab10")
    _outline_masks(ax, boxes.get("masks"), boxes["labels"], colours)
    for (x0, y0, x1, y1), label in zip(boxes["boxes"].tolist(), boxes["labels"].tolist()):
        c = colours(int(label) % 10)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=1.2))
        ax.text(
            x0,
            y0,
            short(names[int(label)], 10),
            color="white",
            fontsize=5,
            va="bottom",
            bbox={"facecolor": c, "edgecolor": "none", "pad": 0.5},
        )


def _outline_masks(ax, masks: torch.Tensor | None, labels: torch.Tensor, colours) -> None:
    """Each instance mask's outline in its class colour, scaled (nearest) to the image the axes show."""
    if masks is None or len(masks) == 0 or not ax.images:
        return
    h, w = ax.images[-1].get_array().shape[:2]
    grown = torch.nn.functional.interpolate(masks[:, None].float().cpu(), (h, w), mode="nearest")[:, 0]
    for m, label in zip(grown, labels.tolist()):
        if m.any():
            ax.contour(m.numpy(), levels=[0.5], colors=[colours(int(label) % 10)], linewidths=0.8)


def short(text: str, n: int = 34) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def draw_titled_tiles(images: torch.Tensor, titles: list[str], path: Path, *, alert=None, columns: int = 8) -> None:
    """N x C x H x W images in [0, 1] as a grid, a title over each (in red where `alert` is true)."""
    plt = pyplot()
    n = len(images)
    cols = min(n, columns)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            arr, cmap = to_display(images[i])
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(titles[i], fontsize=7, color="#c0392b" if alert and alert[i] else "black")
    fig.tight_layout()
    save_figure(fig, path)


def overlay_heat(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """The map (scaled to its own maximum) in 'jet' over a dimmed copy of the image."""
    arr, _ = to_display(image)
    rgb = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
    h = heat.detach().float().cpu()
    h = (h / h.max()).numpy() if h.max() > 0 else h.numpy()
    colours = pyplot().get_cmap("jet")(h)[..., :3]
    return (1 - alpha) * (0.3 + 0.7 * rgb) + alpha * colours
