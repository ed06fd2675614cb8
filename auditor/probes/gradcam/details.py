"""The gradcam probe's details, typed: what results.json keeps (to_dict / from_dict), and the report's view of them.

results.json keeps the plain dicts that `to_dict` gives, key for key as before these classes
existed; `GradCamView.of(details)` rebuilds what reports/templates/probes/gradcam.html.j2 reads
from such a dict, so `audit report` re-renders runs saved by earlier versions too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from auditor.probes.gradcam.figures import LABELS

# The report's table names the baselines as such (the figures' legends are shorter).
TABLE_LABELS = {**LABELS, "random": "random map (baseline)", "edges": "edges, Sobel (baseline)"}


@dataclass
class Auc:
    """Areas under one map's mean deletion (lower is better) and insertion (higher is better) curves."""

    deletion: float
    insertion: float


@dataclass
class RoadAuc:
    """Areas under one map's mean ROAD curves: most relevant removed first (lower is better), least relevant
    first (higher is better)."""

    morf: float
    lerf: float


@dataclass
class Stage:
    """One stage of cascading randomisation."""

    layers: str  # the lowest layer (or block) re-initialised; "all" when every one is
    top: int  # how many learned layers (or blocks), counted from the top, are re-initialised
    similarity: float  # mean rank correlation of the maps with the trained model's


@dataclass
class Localisation:
    """The maps against the ground-truth objects (boxes, masks) of the rows matched to one."""

    energy_in_object: float  # mean share of a map's mass inside its object
    pointing_game: float  # share of maps whose peak lands on the object (within tolerance_px)
    object_area: float  # mean share of the image the objects cover
    objects: int  # rows matched to an object
    tolerance_px: int


@dataclass
class BorderClass:
    """Where one explained class's maps fall."""

    name: str
    rows: int  # its maps
    border_energy: float  # their mean share of mass in the image's outer band

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, "rows": self.rows, "border_energy": self.border_energy}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BorderClass:
        return cls(name=d["class"], rows=d["rows"], border_energy=d["border_energy"])


@dataclass
class Border:
    """How much of the maps' mass lies in the image's outer band, overall and per class (worst first)."""

    band: float  # the band's share of each side
    area: float  # the band's share of the image
    mean: float | None  # over every map with mass; None when none has any
    classes: list[BorderClass]

    def to_dict(self) -> dict[str, Any]:
        return {"band": self.band, "area": self.area, "mean": self.mean, "classes": [c.to_dict() for c in self.classes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Border:
        return cls(d["band"], d["area"], d["mean"], [BorderClass.from_dict(c) for c in d["classes"]])


@dataclass
class Shortcut:
    """Where one explained class's maps concentrate (auditor.probes.gradcam.shortcut)."""

    name: str
    index: int  # the class's index among the model's classes
    rows: int  # its maps
    box: tuple[int, int, int, int]  # the window holding most of its mean map: x0, y0, x1, y1 (x1, y1 exclusive)
    place: str  # the window's place in words
    concentrated: float  # share of its maps that hold at least Shortcuts.enough of their mass in the window
    mass: float  # its maps' mean share of mass in the window
    others: float | None  # the other classes' maps' mean share there; None when no other class was explained
    on_object: float | None  # share of its maps' mass in the window on its ground-truth objects; None without them
    flagged: bool = False

    @property
    def contrast(self) -> float | None:
        """How many times the other classes' share the class's maps put in the window (None: no other class)."""
        if self.others is None:
            return None
        return self.mass / self.others if self.others > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"class": d.pop("name"), **d, "box": list(self.box)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shortcut:
        rest = {k: v for k, v in d.items() if k not in ("class", "box")}
        return cls(name=d["class"], box=tuple(d["box"]), **rest)


@dataclass
class Shortcuts:
    """Per explained class, the place its maps concentrate on; flagged classes first."""

    window: float  # the window's share of the image's area
    size: tuple[int, int]  # the maps' H x W
    classes: list[Shortcut]
    enough: float  # the share of its mass a map holds in the window to concentrate there
    contrast: float  # how many times the other classes' share a flagged class's maps put in the window

    @property
    def flagged(self) -> list[Shortcut]:
        return [s for s in self.classes if s.flagged]

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "size": list(self.size),
            "enough": self.enough,
            "contrast": self.contrast,
            "classes": [c.to_dict() for c in self.classes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shortcuts:
        classes = [Shortcut.from_dict(c) for c in d["classes"]]
        return cls(d["window"], tuple(d["size"]), classes, d["enough"], d["contrast"])


@dataclass
class NothingExplained:
    """Details when no sampled image had anything to explain."""

    layers: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GradCamDetails:
    layers: list[str]  # the modules the maps are read from
    methods: list[str]  # the maps shown, in the order asked for
    primary: str  # the gradient method the checks judge
    rows: int  # rows explained
    images: int  # images sampled
    faithful_rows: int  # rows scored by deletion / insertion
    steps: int  # deletion / insertion steps
    aucs: dict[str, Auc]  # per map, the methods' then the baselines' (random, edges)
    stages: list[Stage]
    cam: bool  # CAM from a GAP + linear head
    captions: dict[str, str]  # artifact -> caption
    row_kind: str  # what a row is
    localisation: Localisation | None  # None where no row has a known object ({} in results.json)
    border: Border | None  # None only in runs saved before it was measured
    source: str = ""  # where the maps come from and why (a layer, or the input); "" in runs saved before
    shortcuts: Shortcuts | None = None  # None only in runs saved before it was measured
    road: dict[str, RoadAuc] | None = None  # the judged map's and the baselines'; None in runs saved before ROAD

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "methods": self.methods,
            "primary": self.primary,
            "rows": self.rows,
            "images": self.images,
            "faithful_rows": self.faithful_rows,
            "steps": self.steps,
            "aucs": {name: asdict(a) for name, a in self.aucs.items()},
            "stages": [asdict(s) for s in self.stages],
            "cam": self.cam,
            "captions": self.captions,
            "row_kind": self.row_kind,
            "localisation": asdict(self.localisation) if self.localisation else {},
            "border": self.border.to_dict() if self.border else None,
            "source": self.source,
            "shortcuts": self.shortcuts.to_dict() if self.shortcuts else None,
            "road": {name: asdict(a) for name, a in self.road.items()} if self.road else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradCamDetails:
        return cls(
            layers=d["layers"],
            methods=d["methods"],
            primary=d["primary"],
            rows=d["rows"],
            images=d["images"],
            faithful_rows=d["faithful_rows"],
            steps=d["steps"],
            aucs={name: Auc(**a) for name, a in d["aucs"].items()},
            stages=[Stage(**s) for s in d["stages"]],
            cam=d["cam"],
            captions=d["captions"],
            row_kind=d["row_kind"],
            localisation=Localisation(**d["localisation"]) if d.get("localisation") else None,
            border=Border.from_dict(d["border"]) if d.get("border") else None,
            source=d.get("source", ""),
            shortcuts=Shortcuts.from_dict(d["shortcuts"]) if d.get("shortcuts") else None,
            road={name: RoadAuc(**a) for name, a in d["road"].items()} if d.get("road") else None,
        )


# ---- the report's view ----------------------------------------------------------------------------------


@dataclass
class MapRow:
    """A row of the report's faithfulness table."""

    label: str
    deletion: float
    insertion: float
    primary: bool
    road: RoadAuc | None = None  # where ROAD scored the map (the judged one and the baselines)


@dataclass
class GradCamView:
    """What the report's gradcam section reads."""

    rows: int
    images: int
    row_kind: str
    layers: list[str]
    faithful_rows: int
    steps: int
    maps: list[MapRow]
    road: bool  # ROAD was measured (not in runs saved before it)
    primary: str  # the judged method's name
    stages: list[Stage]
    localisation: Localisation | None
    border: Border | None  # None where no map has mass
    border_classes: list[BorderClass]  # the most border-heavy classes, worst first
    source: str  # where the maps come from and why
    shortcuts: Shortcuts | None  # None in runs saved before it was measured
    shortcut_classes: list[Shortcut]  # flagged classes, then the most distinctive places

    @classmethod
    def of(cls, details: dict[str, Any]) -> GradCamView | None:
        """The view of a run's details; None when nothing was explained."""
        if "aucs" not in details:
            return None
        d = GradCamDetails.from_dict(details)
        border = d.border if d.border is not None and d.border.mean is not None else None
        return cls(
            rows=d.rows,
            images=d.images,
            row_kind=d.row_kind,
            layers=d.layers,
            faithful_rows=d.faithful_rows,
            steps=d.steps,
            maps=[
                MapRow(
                    TABLE_LABELS.get(name, name), a.deletion, a.insertion, name == d.primary, (d.road or {}).get(name)
                )
                for name, a in d.aucs.items()
            ],
            road=d.road is not None,
            primary=TABLE_LABELS[d.primary],
            stages=d.stages,
            localisation=d.localisation,
            border=border,
            border_classes=border.classes[:5] if border else [],
            source=d.source,
            shortcuts=d.shortcuts,
            shortcut_classes=d.shortcuts.classes[: max(5, len(d.shortcuts.flagged))] if d.shortcuts else [],
        )
