"""results.json: the versioned, machine-readable record of one audit.

Format history (bump SCHEMA on any incompatible change; metric keys are API):
  auditor.results/1  first version; later, compatibly: a finding may carry `"key": true` (one of the
                     probe's headline findings, which the report's summary draws from); a probe may carry
                     `intervals` (metric -> [low, high], 95%) and `paired` (metric -> what a paired test of
                     two runs on the same images needs: per-image outcomes or bootstrap replicates, see
                     auditor/stats.py); `data.digest` fingerprints the images; a probe may carry `unmeasured`
                     (what it could not measure and why) and the run top-level `findings` (auditor/degenerate.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from auditor.errors import AuditError
from auditor.files import write_text_atomic

SCHEMA = "auditor.results/1"
STATUSES = ("ok", "skipped", "failed")
SEVERITIES = ("high", "medium", "low", "info")


@dataclass(frozen=True)
class Finding:
    severity: str
    text: str
    key: bool = False  # a headline: the report's "key findings" draw from these first

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")


def finding_dict(f: Finding) -> dict[str, Any]:
    return {"severity": f.severity, "text": f.text, **({"key": True} if f.key else {})}


@dataclass(frozen=True)
class ProbeResult:
    status: str
    seconds: float = 0.0
    score: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    artifacts: tuple[str, ...] = ()  # paths relative to the output folder
    details: dict[str, Any] = field(default_factory=dict)  # free-form data for the report
    error: str | None = None  # status failed
    reason: str | None = None  # status skipped
    suspect: str | None = None  # the probe's own checks say its figures are not measured: why (verdict SUSPECT)
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric (or "score") -> 95% [low, high]
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> outcomes or replicates (stats.py)
    # figures that measure nothing (auditor/degenerate.py): {"why": ..., "metrics": [names, "score" among them]};
    # null ones (a reference with nothing in it) or label-free rates on constant predictions (verdict UNMEASURED)
    unmeasured: dict[str, Any] | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")
        if self.score is not None and not (0.0 <= self.score <= 1.0):
            raise ValueError(f"score {self.score} outside [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = [finding_dict(f) for f in self.findings]
        d["artifacts"] = list(self.artifacts)
        # compatible additions: absent when empty, as files before them
        optional = ("intervals", "paired", "unmeasured")
        return {k: v for k, v in d.items() if (v is not None or k == "score") and not (k in optional and not v)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        d = dict(d)
        d["findings"] = tuple(Finding(**f) for f in d.get("findings", ()))
        d["artifacts"] = tuple(d.get("artifacts", ()))
        return cls(**d)


@dataclass(frozen=True)
class GateResult:
    rule: str
    value: float | None
    passed: bool
    warn: bool = False  # a `warn:` rule never fails the build
    message: str = ""


@dataclass(frozen=True)
class Results:
    model: dict[str, Any]
    data: dict[str, Any]
    run: dict[str, Any]
    probes: dict[str, ProbeResult]
    gates: tuple[GateResult, ...] = ()
    findings: tuple[Finding, ...] = ()  # the run's own, about the model's clean predictions (auditor/degenerate.py)

    @property
    def score(self) -> float | None:
        return overall_score(self.probes)

    def with_gates(self, gates) -> Results:
        return replace(self, gates=tuple(gates))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "data": self.data,
            "run": self.run,
            "score": self.score,
            "probes": {name: p.to_dict() for name, p in self.probes.items()},
            "gates": [asdict(g) for g in self.gates],
            **({"findings": [finding_dict(f) for f in self.findings]} if self.findings else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Results:
        return cls(
            model=d["model"],
            data=d["data"],
            run=d["run"],
            probes={k: ProbeResult.from_dict(v) for k, v in d["probes"].items()},
            gates=tuple(GateResult(**g) for g in d.get("gates", ())),
            findings=tuple(Finding(**f) for f in d.get("findings", ())),
        )


def overall_score(probes: dict[str, ProbeResult]) -> float | None:
    """Mean of the scores of the probes that ran and have one (a score marked unmeasured is none); informational
    probes have none."""
    scores = [
        p.score
        for p in probes.values()
        if p.status == "ok" and p.score is not None and "score" not in (p.unmeasured or {}).get("metrics", ())
    ]
    return sum(scores) / len(scores) if scores else None


def schema() -> dict[str, Any]:
    return json.loads(resources.files("auditor").joinpath("schema/results.schema.json").read_text())


def validate(d: dict[str, Any], source: str = "results") -> None:
    try:
        jsonschema.validate(d, schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise AuditError(f"{source}: not a valid {SCHEMA} file at {where}: {exc.message}") from exc


def _clean(obj):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def save(results: Results, path: Path) -> None:
    write_json(path, results.to_dict())


def load(path: str | Path) -> Results:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise AuditError(f"{path}: no such file (expected a results.json written by `audit run`)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        found = d.get("schema") if isinstance(d, dict) else None
        raise AuditError(f"{path}: schema {found!r}, expected {SCHEMA!r}")
    validate(d, str(path))
    return Results.from_dict(d)
