"""The `attacks` probe's figures: the metric against ε, the minimal-ε histogram, the confusion under attack,
and the gallery of clean and adversarial images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditor.figures import _short, draw_boxes, overlay_mask, pyplot, save_figure, to_display


def robustness_curve(grid, values, pgd, fgsm, clean, label: str, steps: int, path: Path) -> None:
    """The metric at each budget; the budgets evenly spaced, since grids are often geometric."""
    plt = pyplot()
    order = np.argsort(values)
    xs = list(range(len(order) + 1))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(xs, [clean] + [pgd[i] for i in order], "o-", color="#c0392b", label=f"PGD ({steps} steps)")
    ax.plot(xs, [clean] + [fgsm[i] for i in order], "s--", color="#7f8c8d", label="FGSM")
    ax.set_xticks(xs, ["0"] + [grid[i] for i in order])
    ax.set_xlabel("ε (L∞, pixel space)")
    ax.set_ylabel(label)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


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
    ax.set_xlabel("minimal ε (L∞, pixel space)")
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
    ax.set_xlabel(f"predicted under PGD at ε={eps}")
    ax.set_ylabel("true class")
    save_figure(fig, path)


def draw_attack_gallery(columns, adapter, labelled: bool, path: Path) -> None:
    """One column per image: clean, adversarial, perturbation (and masks overlaid for segmenters).

    columns: (clean, adversarial, clean output, adversarial output, eps label, eps, reference).
    """
    plt = pyplot()
    names = adapter.class_names
    segment = adapter.task == "segment"
    detect = adapter.task == "detect"
    rows = ["clean", "adversarial", "perturbation"] + (["reference"] if (segment or detect) and labelled else [])
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.45 * len(columns) + 0.3, 1.55 * len(rows)), squeeze=False
    )
    for col, (clean, adv, out_clean, out_adv, eps_label, eps, ref) in enumerate(columns):
        delta = (adv - clean) / (2 * eps) + 0.5  # the full budget maps to black / white
        if segment:
            k = adapter.num_classes
            panels = [
                (overlay_mask(clean, out_clean, k), None, "prediction"),
                (overlay_mask(adv, out_adv, k), None, f"ε={eps_label}"),
                (*to_display(delta), f"δ ×{0.5 / eps:.0f}"),
            ]
            if labelled:
                panels.append((overlay_mask(clean, ref, k), None, "ground truth"))
        elif detect:
            panels = [
                (*to_display(clean), f"{len(out_clean['boxes'])} boxes", out_clean),
                (*to_display(adv), f"ε={eps_label}: {len(out_adv['boxes'])} boxes", out_adv),
                (*to_display(delta), f"δ ×{0.5 / eps:.0f}"),
            ]
            if labelled:
                panels.append((*to_display(clean), "ground truth", {"boxes": ref[:, 1:5], "labels": ref[:, 0].long()}))
        else:
            truth = f"\n(ref {_short(names[int(ref)], 12)})" if labelled else ""
            panels = [
                (*to_display(clean), f"{_short(names[int(out_clean)], 14)}{truth}"),
                (*to_display(adv), f"ε={eps_label}:\n{_short(names[int(out_adv)], 14)}"),
                (*to_display(delta), f"δ ×{0.5 / eps:.0f}"),
            ]
        for row, (arr, cmap, title, *boxes) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if boxes:
                draw_boxes(ax, boxes[0], names)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, label in enumerate(rows):
        axes[row, 0].set_ylabel(label, fontsize=8)
    if segment or detect:
        first = 1 if segment else 0  # a segmenter's class 0 is the background, never drawn
        legend = ", ".join(
            f"{_short(n, 12)}" + (f"={i}" if segment else "") for i, n in enumerate(names[first:], start=first)
        )
        fig.suptitle(f"classes (colour order of tab10): {legend}", fontsize=7, y=1.0)
    fig.tight_layout()
    save_figure(fig, path)
