"""The `attacks` probe's plots: the metric against ε, the minimal-ε histogram, the confusion under attack."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditor.figures import pyplot, save_figure


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
