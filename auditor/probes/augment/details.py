"""The augment probe's details, typed: what results.json keeps under `details` and the report's section reads.

`AugmentDetails.to_dict()` is the plain dict results.json holds; `AugmentDetails.from_dict` rebuilds the
objects from it (`AugmentProbe.view`, so `audit report` re-renders a saved run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ShiftCell:
    """One severity of one shift."""

    level: str  # what the severity means, for the report ("3", "±15°", "mirrored")
    value: float  # the task's metric under the shift (agreement with the clean prediction when label-free)
    flip: float | None = None  # share of the clean prediction that changed
    ratio: float | None = None  # value / clean metric; None when the clean metric is 0
    side: dict[str, float] = dataclasses.field(default_factory=dict)  # the task's side metrics (mask_map50)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShiftCell:
        return cls(d["level"], d["value"], d.get("flip"), d.get("ratio"), d.get("side", {}))


@dataclass
class ShiftRow:
    """One shift (an ImageNet-C corruption, a geometric or a photometric shift) over its severities."""

    shift: str
    family: str  # noise, blur, weather, digital (ImageNet-C), geometric or photometric
    imagenet_c: bool  # one of the 15 corruptions, which the score averages over
    cells: list[ShiftCell]
    relative: float | None  # mean over severities of shifted / clean metric; None when the clean metric is 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShiftRow:
        """A row as results.json keeps it (flip, ratio and imagenet_c may be absent: a row made by hand)."""
        cells = [ShiftCell.from_dict(c) for c in d["cells"]]
        return cls(d["shift"], d["family"], d.get("imagenet_c", False), cells, d["relative"])


@dataclass
class AugmentDetails:
    rows: list[ShiftRow]  # worst first (lowest relative; rows without one last)
    metric: str  # the metric's name in prose ("accuracy", "mIoU", "agreement with the clean prediction")
    clean: float  # the clean metric (1 when label-free: the clean prediction is the reference)
    label_free: bool
    severities: list[int]  # the severities asked for, sorted
    scale: float  # spatial parameters x scale (1 at 224 px)
    size: list[int]  # the model's input size, [H, W]
    reference: str | None  # what the corruption errors are relative to, in prose; None: not computed
    skipped: list[str]  # colour-only shifts not run on a single-channel model
    example: int  # the image the example figures show
    captions: dict[str, str]  # figure path -> caption
    # the side metrics the cells carry (instance masks: mask_map50): name -> words; their clean values (labelled)
    side_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    side_clean: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def corruption_count(self) -> int:
        """How many ImageNet-C corruptions the score averages over."""
        return sum(r.imagenet_c for r in self.rows)

    def blank_cells(self, row: ShiftRow) -> int:
        """Empty table cells after a row with fewer severities than the table (a flip has one)."""
        return len(self.severities) - len(row.cells)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentDetails:
        return cls(**{**d, "rows": [ShiftRow.from_dict(r) for r in d["rows"]]})
