"""Figures of the patch probe: the patches, success against patch size, and patched examples."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from auditor.figures import draw_boxes, overlay_heat, overlay_mask, pyplot, save_figure, short, to_display
from auditor.probes.patch.details import HALF, Wording, scale_label

if TYPE_CHECKING:
    from auditor.probes.patch.goals.base import Scored

COLOURS = {"targeted": "#c0392b", "untargeted": "#2471a3", "hide": "#c0392b"}
CHANGED = "#c0392b"


# ---- how a task's output is drawn over its image ----------------------------------------------------------


def show_image(ax, adapter, image: torch.Tensor, out) -> None:
    """The image alone (a class is said in the title)."""
    arr, cmap = to_display(image)
    ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")


def show_mask(ax, adapter, image: torch.Tensor, out) -> None:
    ax.imshow(overlay_mask(image, out, adapter.num_classes), interpolation="nearest")


def show_boxes(ax, adapter, image: torch.Tensor, out) -> None:
    show_image(ax, adapter, image, out)
    draw_boxes(ax, out, adapter.class_names)
    h, w = image.shape[-2:]
    ax.set_xlim(-0.5, w - 0.5)  # boxes past the edge must not widen the panel
    ax.set_ylim(h - 0.5, -0.5)


@dataclass(frozen=True)
class Panels:
    """How a goal's examples are drawn: its output over the image, whether the patch is outlined (masks and boxes
    hide it), and whether a legend of the mask colours heads the figure."""

    show: Callable  # (ax, adapter, image, output) -> None
    outline: bool = False
    legend: bool = False


CLASSES = Panels(show_image)
MASKS = Panels(show_mask, outline=True, legend=True)
BOXES = Panels(show_boxes, outline=True)


@dataclass
class Gallery:
    """Examples for the report: clean and patched images, the model's outputs, and Grad-CAM maps if asked for."""

    clean: torch.Tensor  # N x C x H x W
    patched: torch.Tensor
    cover: torch.Tensor  # N x H x W, the patch's coverage
    clean_out: list  # classes, masks or detections
    patched_out: list
    titles: list[tuple[str, str, bool]]  # (clean title, patched title, whether the output changed)
    panels: Panels
    cams: tuple[torch.Tensor, torch.Tensor] | None = None  # (clean, patched) N x H x W


# ---- the figures ------------------------------------------------------------------------------------------


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _percent(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def _nan(values) -> list[float]:
    return [math.nan if v is None else v for v in values]


def draw_patches(patches: dict[str, list[torch.Tensor]], scored: Scored, path: Path) -> None:
    """A row per mode, a column per size: each patch at its own resolution (nearest-neighbour, so pixels show)."""
    plt = pyplot()
    modes, scales, series = list(patches), scored.scales, scored.series()
    cols = len(scales)
    fig, axes = plt.subplots(len(modes), cols, figsize=(1.55 * cols + 0.6, 1.75 * len(modes) + 0.2), squeeze=False)
    for r, mode in enumerate(modes):
        success = series[mode][0]
        for c, (scale, patch) in enumerate(zip(scales, patches[mode])):
            ax = axes[r, c]
            arr, cmap = to_display(patch)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            side = patch.shape[-1]
            ax.set_title(f"{scale_label(scale)} · {side}×{side} px\nsuccess {_percent(success[c])}", fontsize=7)
            _bare(ax)
        axes[r, 0].set_ylabel(short(scored.labels[mode], 22), fontsize=7.5)
    fig.tight_layout()
    save_figure(fig, path)


def draw_success(scored: Scored, what: Wording, intervals: dict, path: Path) -> None:
    """Success rate against patch area (log scale), each mode beside its random-patch baseline, and the half line;
    error bars: the 95% intervals over the held-out images (`intervals`: the probe's, by metric key)."""
    plt = pyplot()
    scales = scored.scales
    fig, ax = plt.subplots(figsize=(5.4, 3.3))
    for mode, (values, baseline) in scored.series().items():
        colour = COLOURS.get(mode, "#c0392b")
        label = scored.labels[mode]
        ax.plot(scales, _nan(values), "o-", color=colour, label=label)
        prefix = "untargeted_" if mode == "untargeted" else ""
        bars = [(s, v, intervals.get(f"{prefix}success_rate@scale={s:g}")) for s, v in zip(scales, values)]
        bars = [(s, v, b) for s, v, b in bars if v is not None and b is not None]
        if bars:
            err = [[max(v - b[0], 0.0) for _, v, b in bars], [max(b[1] - v, 0.0) for _, v, b in bars]]
            ax.errorbar(
                [s for s, _, _ in bars], [v for _, v, _ in bars], yerr=err, fmt="none", ecolor=colour, capsize=3
            )
        ax.plot(scales, _nan(baseline), ":", color=colour, alpha=0.7, label=f"{label}: random patch")
    ax.axhline(HALF, color="#7f8c8d", linestyle="--", linewidth=0.9)
    ax.text(scales[0], HALF + 0.02, f"{HALF:.0%}", fontsize=7, color="#7f8c8d")
    ax.set_xscale("log")
    ax.set_xticks(scales, [scale_label(s) for s in scales])
    ax.minorticks_off()
    ax.set_xlabel(f"patch area (share of the {what.area})")
    ax.set_ylabel(what.axis, fontsize=8.5)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


def draw_examples(adapter, gallery: Gallery, path: Path) -> None:
    """A column per example: clean and patched with the model's output; Grad-CAM of both below when given."""
    plt = pyplot()
    n, panels = len(gallery.clean), gallery.panels
    rows = ["clean", "patched"] + (["Grad-CAM clean", "Grad-CAM patched"] if gallery.cams is not None else [])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n + 0.5, 1.7 * len(rows) + 0.2), squeeze=False)
    for i in range(n):
        clean_title, patched_title, changed = gallery.titles[i]
        for r, (image, out, title) in enumerate(
            [
                (gallery.clean[i], gallery.clean_out[i], clean_title),
                (gallery.patched[i], gallery.patched_out[i], patched_title),
            ]
        ):
            ax = axes[r, i]
            panels.show(ax, adapter, image, out)
            if r == 1 and panels.outline:
                ax.contour(gallery.cover[i].numpy(), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(short(title, 26), fontsize=7, color=CHANGED if r == 1 and changed else "black")
        if gallery.cams is not None:
            _draw_cams(axes[2:, i], gallery, i)
        for ax in axes[:, i]:
            _bare(ax)
    for r, label in enumerate(rows):
        axes[r, 0].set_ylabel(label, fontsize=7.5)
    if panels.legend:
        names = adapter.class_names
        legend = ", ".join(f"{short(name, 12)}={k}" for k, name in enumerate(names[1:], start=1))
        fig.suptitle(f"classes (colour order of tab10): {legend}; patch outlined in yellow", fontsize=7, y=1.0)
    fig.tight_layout()
    save_figure(fig, path)


def _draw_cams(axes, gallery: Gallery, i: int) -> None:
    """Grad-CAM of example i on the clean and on the patched image, one per axis."""
    for ax, image, cam in zip(axes, (gallery.clean[i], gallery.patched[i]), (gallery.cams[0][i], gallery.cams[1][i])):
        ax.imshow(overlay_heat(image, cam), interpolation="bilinear")
        if cam.max() <= 0:
            ax.set_title("map is zero", fontsize=6.5)
