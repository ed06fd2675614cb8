"""The Probe contract and the registry of probes.

A probe is a class with a `name`, the `tasks` it supports, a `Params` dataclass of
defaults and one `run(ctx)` that returns a ProbeResult. Built-in and third-party probes
register alike, through the `auditor.probes` entry-point group: the built-in list is the
entry points in pyproject.toml, and nowhere else.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import sys
import types
import typing
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch

from auditor import distributed
from auditor.data import EvalData
from auditor.degenerate import Degeneracy, inspect
from auditor.errors import AuditError, did_you_mean, first_line
from auditor.models.base import ModelAdapter
from auditor.results import Finding, ProbeResult
from auditor.tasks import Task, task_of

ENTRY_POINT_GROUP = "auditor.probes"


@dataclass
class Context:
    """Everything a probe needs: the model, the data, where to run and where to write."""

    adapter: ModelAdapter
    data: EvalData
    device: torch.device
    seed: int
    batch_size: int
    out_dir: Path  # the run's output folder; a probe writes under out_dir / probe name
    probe_name: str
    progress: Callable[[int, str], Any]  # (total, description) -> a tqdm-like bar
    probes: tuple[str, ...] = ()  # every probe selected for this run (a probe may add a view another one explains)
    checked: Degeneracy | None = None  # what the clean predictions leave to measure; see degeneracy()

    @property
    def task(self) -> Task:
        """What differs by task (predicting, scoring, references, wording) for this run's model."""
        return task_of(self.adapter)

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files: always, but on the ranks after the first of a sharded run
        (auditor.distributed), which compute the same results and leave the writing to rank 0."""
        return distributed.is_main()

    def artifact(self, filename: str) -> tuple[Path, str]:
        """(absolute path to write, path relative to the output folder to record); the folder exists where
        `main` is true (elsewhere nothing may be written)."""
        folder = self.out_dir / self.probe_name
        if self.main:
            folder.mkdir(parents=True, exist_ok=True)
        return folder / filename, f"{self.probe_name}/{filename}"

    def degeneracy(self) -> Degeneracy:
        """What the clean predictions leave to measure (auditor/degenerate.py): the runner checks it once per run;
        a Context made without the runner checks it on first use."""
        if self.checked is None:
            self.checked = inspect(self.adapter, self.data, self.task, self.batch_size, self.device)
        return self.checked

    def generator(self, *key) -> torch.Generator:
        """A generator seeded from the run seed (and `key`: see seed_for), on the device, for the probe's own draws."""
        return torch.Generator(device=self.device).manual_seed(self.seed_for(*key) if key else self.seed)

    def seed_for(self, *key) -> int:
        """The seed of one unit of a probe's work, e.g. (probe step, batch index): the run seed and the key alone
        decide it, so a batch draws the same numbers whichever rank of a sharded run computes it, and whatever
        ran before it."""
        return (self.seed * 1_000_003 + zlib.crc32(":".join(map(str, key)).encode())) % 2**63


@dataclass
class Figures:
    """The figures a probe draws: each saved under its folder, listed as an artifact, with a caption."""

    ctx: Context
    artifacts: list[str] = dataclasses.field(default_factory=list)
    captions: dict[str, str] = dataclasses.field(default_factory=dict)

    def save(self, name: str, caption: str, draw: Callable, *args) -> str:
        """draw(*args, path) writes the file; returns its path relative to the output folder."""
        path, rel = self.ctx.artifact(name)
        if self.ctx.main:
            draw(*args, path)
        self.artifacts.append(rel)
        self.captions[rel] = caption
        return rel


class Skip(Exception):  # noqa: N818 (a probe raises it to say it is skipped, not that something failed)
    """Raised by a probe's run() when this run gives it too little to work on: the probe is `skipped` with the
    message as its reason (say what it needs at least), and the audit goes on."""


def unmeasured(why: str, metrics: dict[str, float | None], keep: tuple[str, ...] = ()) -> ProbeResult:
    """The result of a probe with nothing to measure (why: Degeneracy.empty): every metric but `keep` null, no
    score, one finding that says why, and `unmeasured` naming what is null."""
    nulled = {k: (v if k in keep else None) for k, v in metrics.items()}
    finding = Finding("high", f"nothing to measure: {why}; the figures that depend on it are null", key=True)
    return ProbeResult(
        status="ok",
        score=None,
        metrics=nulled,
        findings=(finding,),
        unmeasured={"why": why, "metrics": ["score", *(k for k in nulled if k not in keep)]},
    )


def not_meaningful(result: ProbeResult, why: str | None, rates: list[str]) -> ProbeResult:
    """`result` with its label-free rates (and its score, made of them) marked as not meaningful, and a finding that
    says why, first; unchanged when why is None."""
    if why is None:
        return result
    # info, not a headline: the run's own key finding says it once for every probe, the section's banner for this one
    finding = Finding("info", f"not meaningful: {why}; these rates and the score are not a measurement")
    return dataclasses.replace(
        result,
        findings=(finding, *result.findings),
        unmeasured={"why": why, "metrics": ["score", *(k for k in rates if k in result.metrics)]},
    )


class Probe(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]  # one line for `audit probes list`
    tasks: ClassVar[tuple[str, ...]]
    # Which way a metric is better, for `drop` gates, `audit diff` and `audit compare`. Entries name a
    # metric before any '@' (`flip_rate` covers `flip_rate@fog:3`) or one full key; the rest: higher is better.
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    no_direction: ClassVar[tuple[str, ...]] = ()  # counts and settings, neither better nor worse
    # The report: the probe's section template (a jinja2 file looked up beside the probe's module first,
    # then among the report's own templates; None: the generic section of findings, figures and metrics),
    # and its place on the page (lower first; the built-ins use 10-60: robustness, explanations, the rest).
    template: ClassVar[str | None] = None
    report_order: ClassVar[int] = 100

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def view(cls, details: dict[str, Any]) -> Any:
        """What the probe's template reads as `s.view`: its details (as results.json keeps them) made into
        the rows and sentences the section shows. A probe with typed details rebuilds them here."""
        return details

    def skip_reason(self, adapter: ModelAdapter) -> str | None:
        """Why this probe cannot run on this model, or None."""
        if adapter.task not in self.tasks:
            return f"{self.name} supports {', '.join(self.tasks)} models, not {adapter.task}"
        return None

    def check(self, adapter: ModelAdapter) -> None:
        """Parameter checks that need the model (a layer name), run before any probe: raise ValueError."""

    @abc.abstractmethod
    def run(self, ctx: Context) -> ProbeResult:
        """Run on ctx and return a ProbeResult with status "ok"; raise on failure."""


def available_probes() -> dict[str, type[Probe]]:
    """name -> probe class, from the entry-point group (the built-ins register there too), by name."""
    targets = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found: dict[str, type[Probe]] = {}
    for name, target in sorted(targets.items()):
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # a broken plugin must not stop the audit of everything else
            print(f"warning: probe {name} ({target}) cannot be loaded: {exc}", file=sys.stderr)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Probe)):
            print(f"warning: probe {name} ({target}) is not a Probe subclass; ignored", file=sys.stderr)
            continue
        found[name] = cls
    return found


HIGHER, LOWER, NEITHER = 1, -1, 0


def metric_direction(probe: str | None, metric: str) -> int:
    """+1 when a higher value of PROBE.METRIC is better, -1 when lower is, 0 when neither.

    Every `score` is higher-better; so is a metric of a probe that is not installed. A full key
    (`deletion_auc@random`) listed by the probe wins over its name before the '@'.
    """
    if metric == "score":
        return HIGHER
    cls = registered_probes().get(probe) if probe else None
    if cls is None:
        return HIGHER
    for key in dict.fromkeys((metric, metric.split("@", 1)[0])):
        if key in cls.lower_is_better:
            return LOWER
        if key in cls.no_direction:
            return NEITHER
    return HIGHER


@functools.lru_cache(maxsize=1)
def registered_probes() -> dict[str, type[Probe]]:
    """available_probes(), loaded once per process (for ordering, directions and the report)."""
    return available_probes()


def report_order(names) -> list[str]:
    """Probe names in the order the report and summary show them: by each probe's `report_order`;
    probes not installed, or that declare no place, after the rest; ties in the order given (run order)."""
    registry = registered_probes()
    names = list(names)
    place = {n: getattr(registry.get(n), "report_order", Probe.report_order) for n in names}
    return sorted(names, key=lambda n: place[n])


def parse_params(probe: type[Probe], values: dict[str, Any]) -> Any:
    """A Params instance from config values; strings from --set are converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(probe.Params)}
    hints = typing.get_type_hints(probe.Params)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise AuditError(f"{probe.name}.{key}: unknown parameter{did_you_mean(key, fields)} (valid: {valid})")
        try:
            kwargs[key] = _convert(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise AuditError(f"{probe.name}.{key}={value!r}: {exc}") from exc
    try:
        return probe.Params(**kwargs)
    except (TypeError, ValueError) as exc:  # a Params.__post_init__ that checks its values
        raise AuditError(f"{probe.name}: {first_line(exc)}") from None


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0])
    if origin in (tuple, list):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        return tuple(_convert(v, args[0]) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    return value
