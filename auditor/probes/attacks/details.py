"""The `attacks` probe's details, typed: what results.json keeps under probes.attacks.details.

`AttacksDetails.to_dict()` is the plain dict results.json holds (its keys are stable: saved runs
are re-rendered by `audit report`), and `AttacksDetails.from_dict()` reads it back for the
report's template, which reads these named fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from auditor.probes.attacks.gradient_masking import Check

# what details.engine says (runs saved before the ensemble name the PGD engine)
ENGINE = "the project's batched attack ensemble (auditor/probes/attacks/ensemble.py)"


@dataclass
class EpsRow:
    """The metric at one budget of the grid: the worst case over the ensemble, the first member (APGD) alone, the
    one-step attack; and how many images each member broke first."""

    eps: str  # as the grid spells it ('0.1', '2/255'): the metric keys use it
    eps_value: float
    fgsm: float
    robust: float
    first: float | None = None  # None: runs saved before the ensemble (their `robust` is PGD's)
    broken_first: dict[str, int] = dataclasses.field(default_factory=dict)  # member -> images it broke first
    side: dict[str, float] = dataclasses.field(default_factory=dict)  # the task's side metrics under the worst case

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpsRow:
        d = dict(d)
        if "pgd" in d:  # runs saved before the ensemble
            d["robust"] = d.pop("pgd")
        return cls(**d)


@dataclass
class ObjectsEpsRow(EpsRow):
    """A detector's row: also the share of objects found clean that the attacks make disappear (None: none found)."""

    disappearance: float | None = None


@dataclass
class MaskedRun:
    """A masking check failed: Square ran on every image the ensemble left, at every ε, with `queries` each."""

    queries: int
    broken: list[int]  # per ε (grid order): images it broke that the ensemble had not
    last_success: int | None  # the latest query at which it broke an image: well below `queries` means converged


@dataclass
class MinEps:
    """The smallest ε that breaks each image of a seeded subset (bisection inside the grid's bracket)."""

    n: int  # images searched
    median: float | None
    censored: int  # images that withstand the largest ε (their value is that ε, a lower bound)
    values: list[float]  # per image, rounded to 6 decimals; 0 for an image wrong when clean
    largest: float  # the largest ε of the grid
    bisect: int  # bisection rounds
    median_censored: bool  # more than half withstand the largest ε: the median is only a lower bound


@dataclass
class ClassRow:
    """One true class: its clean accuracy, its accuracy under attack (worst case) at each ε of the grid (grid order)."""

    class_name: str
    n: int
    clean: float
    robust: list[float]
    falls_at: str | None  # the first ε below half its clean accuracy; "clean" when that is 0; None: never

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "n": self.n,
            "clean": self.clean,
            "robust": self.robust,
            "falls_at": self.falls_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassRow:
        return cls(d["class"], d["n"], d["clean"], d["robust"], d["falls_at"])


@dataclass
class Confusion:
    """How many images of class `true` the attacks turn into class `pred`, and their share of the class."""

    true: str
    pred: str
    count: int
    share: float


@dataclass
class PerClass:
    """Classifiers: per-class rows, weakest first, and the most common confusions under attack at `eps`."""

    rows: list[ClassRow]
    eps: str  # the smallest ε that halves the overall accuracy (else the largest)
    confusions: list[Confusion]
    grid: list[str]  # the ε of each `robust` value

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "eps": self.eps,
            "confusions": [dataclasses.asdict(c) for c in self.confusions],
            "grid": self.grid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PerClass:
        return cls(
            rows=[ClassRow.from_dict(r) for r in d["rows"]],
            eps=d["eps"],
            confusions=[Confusion(**c) for c in d["confusions"]],
            grid=d["grid"],
        )


@dataclass
class AttacksDetails:
    rows: list[EpsRow]  # one per ε, in grid order
    label_free: bool
    metric: str  # what the rows measure, in words ('accuracy', 'mIoU', 'agreement with the clean prediction')
    clean: float
    steps: int
    restarts: int
    step_factor: float
    engine: str
    min_eps: MinEps | None  # None only in runs saved before the minimal ε existed
    checks: list[Check] | None  # the gradient-masking self-checks (None: runs saved before them)
    suspect_masking: bool
    captions: dict[str, str]  # artifact path -> caption
    per_class: PerClass | None = None  # classifiers
    norm: str = "linf"
    members: dict[str, str] = dataclasses.field(default_factory=dict)  # the ensemble's attacks in order: id -> name
    targets: int | None = None  # APGD-T's runner-up classes
    square_queries: int | None = None  # Square's queries per image in the ensemble
    masked: MaskedRun | None = None  # a masking check failed and Square ran everywhere
    # the side metrics the rows carry (instance masks: mask_map50): name -> words; their clean values (labelled)
    side_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    side_clean: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def shows_disappearance(self) -> bool:
        """Whether the rows carry a detector's disappearance rate (a column of the table)."""
        return bool(self.rows) and isinstance(self.rows[0], ObjectsEpsRow)

    def to_dict(self) -> dict[str, Any]:
        """The dict results.json keeps; a section that is None (not measured) is left out."""
        out: dict[str, Any] = {
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "label_free": self.label_free,
            "metric": self.metric,
            "clean": self.clean,
            "steps": self.steps,
            "restarts": self.restarts,
            "step_factor": self.step_factor,
            "engine": self.engine,
        }
        if self.min_eps is not None:
            out["min_eps"] = dataclasses.asdict(self.min_eps)
        if self.checks is not None:
            out["checks"] = [c.to_dict() for c in self.checks]
        out["suspect_masking"] = self.suspect_masking
        out["captions"] = self.captions
        if self.per_class is not None:
            out["per_class"] = self.per_class.to_dict()
        out["norm"] = self.norm
        if self.members:
            out["members"], out["targets"], out["square_queries"] = self.members, self.targets, self.square_queries
        if self.masked is not None:
            out["masked"] = dataclasses.asdict(self.masked)
        if self.side_labels:
            out["side_labels"], out["side_clean"] = self.side_labels, self.side_clean
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttacksDetails:
        return cls(
            rows=[(ObjectsEpsRow if "disappearance" in r else EpsRow).from_dict(r) for r in d["rows"]],
            label_free=d["label_free"],
            metric=d["metric"],
            clean=d["clean"],
            steps=d["steps"],
            restarts=d["restarts"],
            step_factor=d["step_factor"],
            engine=d["engine"],
            min_eps=MinEps(**d["min_eps"]) if "min_eps" in d else None,
            checks=[Check(**c) for c in d["checks"]] if "checks" in d else None,
            suspect_masking=d.get("suspect_masking", False),
            captions=d.get("captions", {}),
            per_class=PerClass.from_dict(d["per_class"]) if "per_class" in d else None,
            norm=d.get("norm", "linf"),
            members=d.get("members", {}),
            targets=d.get("targets"),
            square_queries=d.get("square_queries"),
            masked=MaskedRun(**d["masked"]) if "masked" in d else None,
            side_labels=d.get("side_labels", {}),
            side_clean=d.get("side_clean", {}),
        )
