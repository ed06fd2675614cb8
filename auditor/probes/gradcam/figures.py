"""Figures of the gradcam probe: maps over images, galleries, faithfulness curves, randomisation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from auditor.figures import draw_boxes, overlay_heat, pyplot, save_figure, short, to_display
from auditor.probes.base import Context, Figures
from auditor.targets import Targets, round_robin
from auditor.tasks import task_of

if TYPE_CHECKING:  # these modules read LABELS from here
    from auditor.probes.gradcam.details import Shortcuts
    from auditor.probes.gradcam.faithfulness import Faithfulness
    from auditor.probes.gradcam.maps import Maps
    from auditor.probes.gradcam.sanity import Cascade

LABELS = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "ig": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "Occlusion",
    "random": "random map",
    "edges": "edges (Sobel)",
}


def _mark_target(ax, adapter, t, r: int) -> None:
    """The row's box (detectors), the outline of its mask (segmenters), or both (instance segmenters)."""
    if t.box is not None:
        draw_boxes(ax, {"boxes": t.box[r : r + 1].cpu(), "labels": t.cls[r : r + 1].cpu()}, adapter.class_names)
    if t.mask is not None and bool(t.mask[r].any()):
        ax.contour(t.mask[r].cpu().float().numpy(), levels=[0.5], colors="white", linewidths=0.8)
    if ax.images:  # a box past the image's edge must not widen the panel
        h, w = ax.images[-1].get_array().shape[:2]
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def draw_methods(adapter, x, t, maps: dict[str, torch.Tensor], set_index: list[int], path: Path) -> None:
    plt = pyplot()
    names = adapter.class_names
    cols = 1 + len(maps)
    fig, axes = plt.subplots(len(t), cols, figsize=(1.5 * cols + 0.3, 1.6 * len(t) + 0.2), squeeze=False)
    for r in range(len(t)):
        image = x[int(t.image[r])]
        arr, cmap = to_display(image)
        axes[r, 0].imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        _mark_target(axes[r, 0], adapter, t, r)
        axes[r, 0].set_title(
            f"{short(names[int(t.cls[r])], 14)}" + (" (true)" if t.role[r] == "true" else ""), fontsize=7
        )
        axes[r, 0].set_ylabel(f"image {set_index[r]}", fontsize=7)
        for c, (method, m) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(overlay_heat(image, m[r]), interpolation="bilinear")
            _mark_target(axes[r, c], adapter, t, r)
            axes[r, c].set_title(f"{LABELS[method]}\npeak {float(m[r].max()):.2g}", fontsize=6.5)
        for ax in axes[r]:
            _bare(ax)
    fig.tight_layout()
    save_figure(fig, path)


def draw_gallery(adapter, x, t, maps: torch.Tensor, labels, set_index: list[int], per_class: int, path: Path) -> None:
    """Classifiers (Task.class_logits): a column per predicted class; detectors and segmenters: one cell per row."""
    plt = pyplot()
    names, by_class_logits = adapter.class_names, task_of(adapter).class_logits
    if by_class_logits:
        by_class: dict[int, list[int]] = {}
        for r in range(len(t)):
            if t.role[r] == "predicted":
                by_class.setdefault(int(t.cls[r]), []).append(r)
        classes = sorted(sorted(by_class, key=lambda c: -len(by_class[c]))[:12])
        # A column per class, its examples down the column: ten classes fit the report's width.
        grid = [
            [by_class[c][k] if k < len(by_class[c]) else None for c in classes]
            for k in range(min(per_class, max(len(by_class[c]) for c in classes)))
        ]
        cols = len(classes)
    else:
        cols = 4
        cells = list(range(min(len(t), 12)))
        grid = [cells[i : i + cols] for i in range(0, len(cells), cols)]
    fig, axes = plt.subplots(len(grid), cols, figsize=(1.45 * cols + 0.3, 1.55 * len(grid) + 0.2), squeeze=False)
    for g, rows in enumerate(grid):
        for c in range(cols):
            ax = axes[g, c]
            _bare(ax)
            r = rows[c] if c < len(rows) else None
            if r is None:
                ax.axis("off")
                continue
            i = int(t.image[r])
            ax.imshow(overlay_heat(x[i], maps[r]), interpolation="bilinear")
            _mark_target(ax, adapter, t, r)
            title, colour = short(names[int(t.cls[r])], 14), "black"
            if by_class_logits and labels is not None and int(labels[i]) != int(t.cls[r]):
                title, colour = f"{title}\n(true {short(names[int(labels[i])], 10)})", "#c0392b"
            ax.set_title(f"{title}\nimage {set_index[i]}", fontsize=6.5, color=colour)
    fig.tight_layout()
    save_figure(fig, path)


CLASS_TILES = 20  # the per-class grid shows the classes with the most maps, at most this many


def draw_class_means(adapter, x, t, maps: torch.Tensor, shortcuts: Shortcuts, path: Path) -> None:
    """One tile per explained class: its mean map (each map scaled to sum 1) over its mean image; a flagged
    class's title in red, its window outlined."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    counts = torch.bincount(t.cls.cpu())
    classes = sorted(sorted(torch.nonzero(counts).flatten().tolist(), key=lambda c: -int(counts[c]))[:CLASS_TILES])
    flagged = {s.index: s for s in shortcuts.flagged}
    cols = min(len(classes), 10)
    rows = -(-len(classes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.3, 1.45 * rows + 0.2), squeeze=False)
    unit = maps / maps.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, classes):
        mine = (t.cls == c).nonzero().flatten()
        ax.imshow(overlay_heat(x[t.image[mine]].mean(0), unit[mine].mean(0)), interpolation="bilinear")
        s = flagged.get(c)
        if s is not None:
            x0, y0, x1, y1 = s.box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.5))
        title = f"{short(adapter.class_names[c], 12)}\n{len(mine)} map{'s' if len(mine) > 1 else ''}"
        ax.set_title(title, fontsize=6.5, color="#c0392b" if s is not None else "black")
    fig.tight_layout()
    save_figure(fig, path)


# Each panel of the faithfulness figure: (curve, title, the x axis).
PANELS = (
    ("deletion", "deletion (lower is better)", "share of pixels removed (black)"),
    ("insertion", "insertion (higher is better)", "share of pixels revealed (on a blur)"),
    ("morf", "ROAD, most relevant first (lower is better)", "share of pixels removed (imputed)"),
    ("lerf", "ROAD, least relevant first (higher is better)", "share of pixels removed (imputed)"),
)


def draw_curves(faithful: Faithfulness, path: Path) -> None:
    """Mean deletion and insertion curves of each map, and ROAD's of the judged map and the baselines;
    each legend gives the AUCs."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 5.6))
    styles = {"random": ":", "edges": "--"}
    colours = {name: f"C{i}" for i, name in enumerate(faithful.curves)}  # a map keeps its colour in every panel
    for ax, (mode, title, xlabel) in zip(axes.flat, PANELS):
        curves, aucs = (
            (faithful.road, faithful.road_aucs) if mode in ("morf", "lerf") else (faithful.curves, faithful.aucs)
        )
        for name, modes in curves.items():
            mean = modes[mode].mean(dim=0).cpu().numpy()
            share = np.linspace(0, 1, len(mean))
            ax.plot(
                share,
                mean,
                styles.get(name, "-"),
                color=colours[name],
                label=f"{LABELS[name]} ({getattr(aucs[name], mode):.3f})",
                linewidth=1.4 if name not in styles else 1.1,
            )
        ax.set_title(title, fontsize=8.5)
        ax.set_xlabel(xlabel, fontsize=7.5)
        ax.set_ylabel("score of the explained target", fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, frameon=False)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def draw_randomisation(adapter, x, t, maps: torch.Tensor, cascade: Cascade, path: Path) -> None:
    plt = pyplot()
    stages = cascade.stages
    rows = list(range(min(2, len(t))))
    cols = 2 + len(stages)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.45 * cols + 0.3, 1.6 * len(rows) + 0.3), squeeze=False)
    size = tuple(x.shape[-2:])
    for a, r in enumerate(rows):
        image = x[int(t.image[r])]
        arr, cmap = to_display(image)
        axes[a, 0].imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        _mark_target(axes[a, 0], adapter, t, r)
        axes[a, 0].set_title(short(adapter.class_names[int(t.cls[r])], 14), fontsize=7)
        axes[a, 1].imshow(overlay_heat(image, maps[r]), interpolation="bilinear")
        axes[a, 1].set_title("trained", fontsize=7)
        for c, (stage, stage_maps) in enumerate(zip(stages, cascade.maps), start=2):
            m = torch.nn.functional.interpolate(
                stage_maps[r : r + 1, None].float(), size=size, mode="bilinear", align_corners=False
            )[0, 0]
            axes[a, c].imshow(overlay_heat(image, m), interpolation="bilinear")
            axes[a, c].set_title(f"top {stage.top} random\nρ̄ {stage.similarity:.2f}", fontsize=6.5)
        for ax in axes[a]:
            _bare(ax)
    fig.tight_layout()
    save_figure(fig, path)


CAPTIONS = {
    "methods.png": "Each method's map for the first rows (image number of the set on the left); the raw peak is "
    "printed, since every map is scaled to its own maximum",
    "classes.png": "Where the model looks, per class: each class's mean {method} map (maps scaled to sum 1) over its "
    "mean image. A class whose maps keep to one place of its own, whatever the image, is a location shortcut: its "
    "name is red and the place outlined",
    "faithfulness.png": "Top: deletion (lower is better) and insertion (higher is better), the model's score as "
    "pixels are removed (set to black) or revealed (on a blurred copy) in each map's order. Bottom: ROAD, the "
    "{method} map's and the baselines' pixels removed most relevant first (lower is better) and least relevant "
    "first (higher is better), each removed pixel imputed from its neighbours plus noise so the holes' shape tells "
    "the model nothing (Rong et al. 2022). Mean over rows, AUC in the legend",
    "randomisation.png": "Cascading randomisation: the map of one row as the top layers are re-initialised (left "
    "to right); a trustworthy map falls apart",
}


def draw_all(
    ctx: Context,
    x: torch.Tensor,
    t: Targets,
    maps: Maps,
    faithful: Faithfulness,
    cascade: Cascade,
    picked: torch.Tensor,
    labels,
    per_class: int,
    shortcuts: Shortcuts,
) -> Figures:
    """The probe's figures, saved with their captions."""
    adapter, figures = ctx.adapter, Figures(ctx)
    method, judged = LABELS[maps.primary], maps.full[maps.primary]

    def save(name: str, draw, *args) -> None:
        figures.save(name, CAPTIONS[name].format(method=method), draw, *args)

    indices = picked.tolist()
    show = round_robin(t.image.tolist())[:4]
    shown = {m: v[show] for m, v in maps.full.items()}
    save("methods.png", draw_methods, adapter, x, t.take(show), shown, [indices[int(i)] for i in t.image[show]])
    gallery = task_of(adapter).explain_gallery.format(method=method)
    figures.save("gallery.png", gallery, draw_gallery, adapter, x, t, judged, labels, indices, per_class)
    save("classes.png", draw_class_means, adapter, x, t, judged, shortcuts)
    save("faithfulness.png", draw_curves, faithful)
    if cascade.stages:  # none where no learned weight could be reached
        save("randomisation.png", draw_randomisation, adapter, x, t, judged, cascade)
    return figures
