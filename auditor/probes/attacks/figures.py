"""The `attacks` probe's figures: the metric against ε, the minimal-ε histogram, the confusion under attack,
and the gallery of clean and adversarial images."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from auditor.figures import draw_boxes, overlay_mask, pyplot, save_figure, short, to_display
from auditor.tasks import task_of


def robustness_curve(
    grid, values, curves: dict[str, list[float]], clean, label: str, norm: str, bars: list | None, path: Path
) -> None:
    """The metric at each budget, one line per curve (the worst case first, with its 95% intervals as error bars
    where `bars` gives them: clean first, then per grid entry, None where there is none); the budgets evenly
    spaced, since grids are often geometric."""
    plt = pyplot()
    order = np.argsort(values)
    xs = list(range(len(order) + 1))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    styles = [("o-", "#c0392b"), ("^-.", "#e67e22"), ("s--", "#7f8c8d")]
    for n, ((name, ys), (marker, colour)) in enumerate(zip(curves.items(), styles)):
        line = [clean] + [ys[i] for i in order]
        ax.plot(xs, line, marker, color=colour, label=name + (" (95% intervals)" if n == 0 and bars else ""))
        if n == 0 and bars:
            shown = [bars[0]] + [bars[1 + i] for i in order]
            at = [(x, y, b) for x, y, b in zip(xs, line, shown) if b is not None and y is not None]
            if at:
                err = np.array([[max(y - b[0], 0.0) for _, y, b in at], [max(b[1] - y, 0.0) for _, y, b in at]])
                ax.errorbar(
                    [x for x, _, _ in at], [y for _, y, _ in at], yerr=err, fmt="none", ecolor=colour, capsize=3
                )
    ax.set_xticks(xs, ["0"] + [grid[i] for i in order])
    ax.set_xlabel(f"ε ({NORM_NAMES[norm]}, pixel space)")
    ax.set_ylabel(label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


NORM_NAMES = {"linf": "L∞", "l2": "L2"}


def min_eps_histogram(min_eps: np.ndarray, censored: np.ndarray, values, grid, path: Path) -> None:
    """Images by the smallest ε that breaks them; those that withstand the whole grid get their own bar."""
    plt = pyplot()
    largest = max(values)
    found = min_eps[~censored]
    top = float(found.max()) if len(found) and found.max() > 0 else largest
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    bins = np.linspace(0, top * 1.0001, 17)  # up to the largest minimal ε found, not the largest budget
    width = bins[1] - bins[0]
    ax.hist(found, bins=bins, color="#c0392b", alpha=0.85, label="broken at this ε")
    if censored.any():
        ax.bar(
            top + 1.5 * width,
            int(censored.sum()),
            width=width,
            color="#7f8c8d",
            label=f"withstand ε={grid[int(np.argmax(values))]}",
        )
    median = float(np.median(min_eps))
    ax.axvline(median, color="#2c3e50", linestyle="--", label=f"median {median:.3g} ({median * 255:.1f}/255)")
    ticks = [v for v in sorted(values) if v <= top * 1.0001]
    ax.set_xticks([0.0] + ticks, ["0"] + [grid[values.index(v)] for v in ticks], rotation=30)
    ax.set_xlabel("minimal ε (pixel space)")
    ax.set_ylabel("images")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images, even on a small subset
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def confusion_heatmap(matrix, class_names, eps: str, path: Path) -> None:
    """Counts of true class (rows) against the class predicted under attack (columns)."""
    plt = pyplot()
    m = matrix.numpy()
    k = len(m)
    size = max(3.6, 0.42 * k + 1.6)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    shares = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Reds", vmin=0, vmax=1)
    names = [n if len(n) <= 12 else n[:11] + "…" for n in class_names[:k]]
    ax.set_xticks(range(k), names, rotation=60, fontsize=8, ha="right")
    ax.set_yticks(range(k), names, fontsize=8)
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    ax.set_xlabel(f"predicted under attack (worst case) at ε={eps}")
    ax.set_ylabel("true class")
    save_figure(fig, path)


@dataclass
class GalleryColumn:
    """One image of the gallery: clean and attacked, the model's output on each, the budget, the reference."""

    clean: torch.Tensor  # C x H x W in [0, 1]
    adversarial: torch.Tensor
    out_clean: Any  # the adapter's prediction for one image (a class id, a mask, or boxes)
    out_adversarial: Any
    eps_label: str  # as the grid spells it
    eps: float
    reference: Any


@dataclass
class Panel:
    image: np.ndarray
    cmap: str | None
    title: str
    boxes: dict | None = None  # boxes to draw over the image: {"boxes": K x 4, "labels": K}


def _perturbation(c: GalleryColumn) -> Panel:
    delta = (c.adversarial - c.clean) / (2 * c.eps) + 0.5  # the full budget maps to black / white
    return Panel(*to_display(delta), f"δ ×{0.5 / c.eps:.0f}")


class GalleryStyle(abc.ABC):
    """How the gallery draws one task's outputs; chosen by the task's `attack_gallery` (GALLERY_STYLES)."""

    reference_row: ClassVar[bool] = False  # the reference in a row of its own (when the data is labelled)
    legend_from: ClassVar[int | None] = None  # the first class named in a legend over the gallery; None: no legend

    @abc.abstractmethod
    def panels(self, c: GalleryColumn, names, num_classes: int, labelled: bool) -> list[Panel]:
        """The panels of one column, top to bottom."""

    def legend_name(self, i: int, name: str) -> str:
        return short(name, 12)


class ClassPanels(GalleryStyle):
    """Classifiers: the class in each title (and the reference under the clean one); no legend."""

    def panels(self, c: GalleryColumn, names, num_classes: int, labelled: bool) -> list[Panel]:
        truth = f"\n(ref {short(names[int(c.reference)], 12)})" if labelled else ""
        return [
            Panel(*to_display(c.clean), f"{short(names[int(c.out_clean)], 14)}{truth}"),
            Panel(*to_display(c.adversarial), f"ε={c.eps_label}:\n{short(names[int(c.out_adversarial)], 14)}"),
            _perturbation(c),
        ]


class BoxPanels(GalleryStyle):
    """Detectors: the boxes found, drawn over the images; the labelled boxes in a row of their own."""

    reference_row = True
    legend_from = 0

    def panels(self, c: GalleryColumn, names, num_classes: int, labelled: bool) -> list[Panel]:
        out = [
            Panel(*to_display(c.clean), f"{len(c.out_clean['boxes'])} boxes", c.out_clean),
            Panel(
                *to_display(c.adversarial),
                f"ε={c.eps_label}: {len(c.out_adversarial['boxes'])} boxes",
                c.out_adversarial,
            ),
            _perturbation(c),
        ]
        if labelled:
            ref = c.reference
            out.append(Panel(*to_display(c.clean), "ground truth", {"boxes": ref[:, 1:5], "labels": ref[:, 0].long()}))
        return out


class MaskPanels(GalleryStyle):
    """Segmenters: the masks overlaid on a grey copy of the image; the labelled mask in a row of its own."""

    reference_row = True
    legend_from = 1  # class 0 is the background, never drawn

    def panels(self, c: GalleryColumn, names, num_classes: int, labelled: bool) -> list[Panel]:
        k = num_classes
        out = [
            Panel(overlay_mask(c.clean, c.out_clean, k), None, "prediction"),
            Panel(overlay_mask(c.adversarial, c.out_adversarial, k), None, f"ε={c.eps_label}"),
            _perturbation(c),
        ]
        if labelled:
            out.append(Panel(overlay_mask(c.clean, c.reference, k), None, "ground truth"))
        return out

    def legend_name(self, i: int, name: str) -> str:
        return f"{short(name, 12)}={i}"  # the class id, as the masks hold it


GALLERY_STYLES: dict[str, GalleryStyle] = {"classes": ClassPanels(), "boxes": BoxPanels(), "masks": MaskPanels()}


def draw_attack_gallery(columns: list[GalleryColumn], adapter, labelled: bool, path: Path) -> None:
    """One column per image: clean, adversarial, perturbation (and the reference where it is drawn)."""
    plt = pyplot()
    names = adapter.class_names
    style = GALLERY_STYLES[task_of(adapter).attack_gallery]
    rows = ["clean", "adversarial", "perturbation"] + (["reference"] if style.reference_row and labelled else [])
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.45 * len(columns) + 0.3, 1.55 * len(rows)), squeeze=False
    )
    for col, column in enumerate(columns):
        for row, panel in enumerate(style.panels(column, names, adapter.num_classes, labelled)):
            ax = axes[row, col]
            ax.imshow(panel.image, cmap=panel.cmap, vmin=0, vmax=1, interpolation="nearest")
            if panel.boxes is not None:
                draw_boxes(ax, panel.boxes, names)
            ax.set_title(panel.title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, label in enumerate(rows):
        axes[row, 0].set_ylabel(label, fontsize=8)
    if style.legend_from is not None:
        legend = ", ".join(
            style.legend_name(i, n) for i, n in enumerate(names[style.legend_from :], start=style.legend_from)
        )
        fig.suptitle(f"classes (colour order of tab10): {legend}", fontsize=7, y=1.0)
    fig.tight_layout()
    save_figure(fig, path)
