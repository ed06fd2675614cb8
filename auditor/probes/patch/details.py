"""The patch probe's details, typed: a row per patch scale, the wording of its goal, its target, and the view
its template reads.

results.json keeps them as plain JSON (`PatchDetails.to_dict`): a row is the list of its fields in
the order they are declared (scale, px, then the task's measures), as it always was;
`PatchDetails.from_dict` reads them back, so `audit report` re-renders old runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

HALF = 0.5  # min_scale_for_half: the smallest scale whose success rate reaches this


def scale_label(scale: float) -> str:
    return f"{100 * scale:g}%"


def first_lower(text: str) -> str:
    """'Relative mIoU drop' -> 'relative mIoU drop' (str.lower would give 'miou')."""
    return text[:1].lower() + text[1:]


def relative_drop(clean: float, after: float) -> float | None:
    if not clean or math.isnan(clean) or math.isnan(after):
        return None
    return min(max(1 - after / clean, 0.0), 1.0)


# ---- a row per scale ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One patch scale on the held-out images; a subclass per task adds its measures (None: nothing to count)."""

    scale: str  # "10%": the patch's share of the image (detectors: of each box)
    px: str  # the patch's own resolution, "9×9"

    @property
    def success(self) -> float | None:
        """The success rate the score and min_scale_for_half are read from."""
        raise NotImplementedError

    def modes(self) -> dict[str, tuple[float | None, float | None]]:
        """Per trained mode, (its success, a random patch's at the same size and places)."""
        raise NotImplementedError

    def values(self) -> list[float | None]:
        """The measures, in the table's column order (after the scale and the px columns)."""
        return [getattr(self, f.name) for f in fields(self) if f.name not in ("scale", "px")]

    def cells(self) -> list:
        """The row as results.json keeps it."""
        return [self.scale, self.px, *self.values()]

    @classmethod
    def from_cells(cls, cells: list) -> Row:
        return cls(*cells)


@dataclass
class ClassifyRow(Row):
    turned: float | None  # targeted: share of images not already the target that the patch turns into it
    random_turned: float | None
    changed: float | None  # untargeted: share of correctly classified images whose prediction changes
    random_changed: float | None

    @property
    def success(self) -> float | None:
        return self.turned

    def modes(self):
        return {"targeted": (self.turned, self.random_turned), "untargeted": (self.changed, self.random_changed)}


@dataclass
class DetectRow(Row):
    clean_recall: float | None
    recall: float | None  # with the patch on every object
    random_recall: float | None
    hidden: float | None  # share of the objects found without a patch that it hides
    random_hidden: float | None

    @property
    def success(self) -> float | None:
        return self.hidden

    def modes(self):
        return {"hide": (self.hidden, self.random_hidden)}


@dataclass
class SegmentRow(Row):
    clean_miou: float  # all three on the pixels the patch does not cover
    miou: float
    random_miou: float
    changed_outside: float  # share of the pixels outside the patch whose class changes

    @property
    def success(self) -> float | None:
        """The relative mIoU drop outside the patch."""
        return relative_drop(self.clean_miou, self.miou)

    def modes(self):
        return {"untargeted": (self.success, relative_drop(self.clean_miou, self.random_miou))}


# ---- the details ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wording:
    """How a goal's success reads in findings, figures and the report."""

    success: str  # the success rate in words, capitalised
    area: str  # what a scale is a share of
    axis: str  # the success plot's y axis
    cam: str  # what the examples' Grad-CAM explains


@dataclass(frozen=True)
class Target:
    """The class targeted patches aim at (classifiers)."""

    index: int
    name: str
    choice: str  # "given" (patch.target) or "auto" (chosen by the untargeted patches and a screening: target.py)
    screened: dict[str, float] | None = None  # auto: each candidate class's screening success on training images

    @property
    def given(self) -> bool:
        return self.choice == "given"


@dataclass
class PatchDetails:
    """ProbeResult.details of the patch probe (the key order is results.json's)."""

    task: str
    scales: list[str]
    columns: list[str]
    rows: list[Row]
    what: Wording
    score_scale: str
    min_scale_for_half: float | None
    train_images: int
    trained_on: int  # training images a patch can sit on (detectors: those with an object)
    held_out_images: int
    steps: int
    images_per_step: int
    lr: float
    rotation: float
    side_jitter: list[float]
    label_free: bool
    modes: list[str]
    target: Target | None
    captions: dict[str, str]
    gradcam: bool  # whether the examples carry Grad-CAM maps
    # Restarts: patches trained per scale and mode, the training images that judged them (the strongest kept),
    # and per mode, per scale, [lowest, highest] training success among them. None in runs made before restarts.
    restarts: int | None = None
    judged_on: int | None = None
    restart_success: dict[str, list[list[float] | None]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rows"] = [row.cells() for row in self.rows]
        out["what"] = asdict(self.what)
        out["target"] = None if self.target is None else {k: v for k, v in asdict(self.target).items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, details: dict[str, Any], row: type[Row]) -> PatchDetails:
        """Details as results.json keeps them; `row`: the row class of the details' task."""
        values = {f.name: details.get(f.name) for f in fields(cls)}
        values["rows"] = [row.from_cells(cells) for cells in details["rows"]]
        values["what"] = Wording(**details["what"])
        values["target"] = None if details.get("target") is None else Target(**details["target"])
        return cls(**values)


# ---- what the template reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    scale: str
    px: str
    values: list[float | None]
    scored: bool  # the row of patch.score_scale


@dataclass(frozen=True)
class PatchView:
    """The report section: the table, and what its sentences need."""

    columns: list[str]
    rows: list[TableRow]
    target: Target | None  # targeted patches: success is counted towards it
    per_object: bool  # a copy on every object (detectors), not one anywhere in the image
    label_free: bool
    success: str  # the success rate in words, lower case
    area: str
    min_scale_for_half: float | None
    score_scale: str
    train_images: int
    held_out_images: int
    steps: int
    lr: float
    images_per_step: int
    rotation: float
    side_jitter: list[float]
    restarts: int | None
    judged_on: int | None
    spread: list[tuple[str, list[float]]]  # per mode, the restarts' [lowest, highest] training success at the score

    @classmethod
    def of(cls, d: PatchDetails, per_object: bool) -> PatchView:
        k = d.scales.index(d.score_scale) if d.score_scale in d.scales else None
        spread = [
            (mode, per_scale[k])
            for mode, per_scale in (d.restart_success or {}).items()
            if k is not None and per_scale[k] is not None
        ]
        return cls(
            columns=d.columns,
            rows=[TableRow(r.scale, r.px, r.values(), r.scale == d.score_scale) for r in d.rows],
            target=d.target,
            per_object=per_object,
            label_free=d.label_free,
            success=first_lower(d.what.success),
            area=d.what.area,
            min_scale_for_half=d.min_scale_for_half,
            score_scale=d.score_scale,
            train_images=d.train_images,
            held_out_images=d.held_out_images,
            steps=d.steps,
            lr=d.lr,
            images_per_step=d.images_per_step,
            rotation=d.rotation,
            side_jitter=d.side_jitter,
            restarts=d.restarts,
            judged_on=d.judged_on,
            spread=spread,
        )
