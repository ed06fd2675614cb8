"""The augment probe's figures: per shift family, the example image clean and at each severity, with the
model's output on each (drawn by the shared helpers of auditor.figures)."""

from __future__ import annotations

import abc
from pathlib import Path

from auditor.figures import draw_boxes, overlay_mask, pyplot, save_figure, short, to_display
from auditor.models.base import SHOW_CONF
from auditor.probes.augment.shifts import FAMILY_ORDER
from auditor.probes.base import Context, Figures


class Panels(abc.ABC):
    """How a task's output is drawn on one image of a shift example: one subclass per task, in PANELS."""

    note = ""  # what the caption says about the drawing, after "with the model's output"

    @abc.abstractmethod
    def draw(self, ax, label: str, image, out, clean_out, adapter) -> tuple[str, str]:
        """Draw `image` with `out` on `ax`; returns the panel's (title, title colour)."""


class ClassTitles(Panels):
    """Classifiers: the predicted class is the title, red where it differs from the clean prediction."""

    note = " (classes that differ from the clean prediction in red)"

    def draw(self, ax, label, image, out, clean_out, adapter):
        arr, cmap = to_display(image)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        colour = "#c0392b" if int(out) != int(clean_out) else "black"
        return f"{label}: {short(adapter.class_names[int(out)], 12)}", colour


class Boxes(Panels):
    """Detectors: the boxes at the shown confidence, counted in the title."""

    def draw(self, ax, label, image, out, clean_out, adapter):
        arr, cmap = to_display(image)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        keep = out["scores"] >= SHOW_CONF
        draw_boxes(ax, {k: v[keep] for k, v in out.items() if k in ("boxes", "labels", "masks")}, adapter.class_names)
        return f"{label}: {int(keep.sum())} boxes", "black"


class Masks(Panels):
    """Segmenters: the predicted mask over a grey copy of the image."""

    def draw(self, ax, label, image, out, clean_out, adapter):
        ax.imshow(overlay_mask(image, out, adapter.num_classes), interpolation="nearest")
        return label, "black"


# The one place the figures depend on the task: its name picks how an output is drawn.
PANELS: dict[str, Panels] = {"classify": ClassTitles(), "detect": Boxes(), "segment": Masks()}


def draw_shift_examples(rows, clean, adapter, panels: Panels, path: Path) -> None:
    """A row per shift: the clean image, then the image at each severity, each with the model's output.

    rows: (shift name, [(level label, image, output), ...]); clean: (image, output).
    """
    plt = pyplot()
    columns = 1 + max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.35 * columns + 0.4, 1.45 * len(rows) + 0.2), squeeze=False)
    clean_image, clean_out = clean
    for r, (name, cells) in enumerate(rows):
        for c, (label, image, out) in enumerate([("clean", clean_image, clean_out), *cells]):
            ax = axes[r, c]
            title, colour = panels.draw(ax, label, image, out, clean_out, adapter)
            ax.set_title(title, fontsize=6.5, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
        for c in range(len(cells) + 1, columns):
            axes[r, c].axis("off")
        axes[r, 0].set_ylabel(name.replace("_", " "), fontsize=7.5)
    fig.tight_layout()
    save_figure(fig, path)


def draw_galleries(ctx: Context, shifts, shown: dict[str, list], clean_out, example: int) -> Figures:
    """One figure per family: a row per shift, the example image clean and at each severity.

    shown: shift name -> [(level label, shifted example image, its output), ...]; clean_out: the model's
    output on the clean example image.
    """
    x, _ = ctx.data.batch(slice(example, example + 1), "cpu")
    panels = PANELS[ctx.task.name]
    figures = Figures(ctx)
    for family in FAMILY_ORDER:
        rows = [(s.name, shown[s.name]) for s in shifts if s.family == family and shown[s.name]]
        if not rows:
            continue
        caption = (
            f"{family.capitalize()}: image {example} of the set, clean and at each severity, with the "
            "model's output" + panels.note
        )
        figures.save(
            f"examples_{family}.png", caption, draw_shift_examples, rows, (x[0], clean_out), ctx.adapter, panels
        )
    return figures
