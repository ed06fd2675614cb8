"""Zoo source: a registry entry plus its shipped, hash-checked checkpoint.

This is the one module of auditor that imports the zoo. The zoo's recipes import auditor (their
networks, data and metrics come from here), so auditor asks only the registry, which knows every
entry's name without importing any recipe; a recipe is imported when its entry is asked for.
"""

from __future__ import annotations

from pathlib import Path

from auditor.errors import AuditError
from auditor.files import sha256_of
from auditor.models.base import ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess, SegmenterAdapter
from auditor.models.common import apply_state_dict, load_state_dict
from auditor.models.ultralytics import DetectorAdapter
from zoo import registry
from zoo.registry import ZooEntry

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "classify": ClassifierAdapter,
    "detect": DetectorAdapter,
    "segment": SegmenterAdapter,
}


def is_zoo_name(name: str) -> bool:
    """Whether `name` is a zoo model, without importing any recipe."""
    return name in registry.names()


def zoo_names() -> list[str]:
    return registry.names()


def zoo_entry(name: str) -> ZooEntry | None:
    """The registry entry (its recipe imported now), or None."""
    return registry.get_entry(name)


def zoo_entries() -> list[ZooEntry]:
    """Every entry, all recipes imported (for `audit zoo list`)."""
    return registry.list_entries()


def audit_defaults(name: str) -> tuple[int | None, dict[str, dict]]:
    """(batch size or None, {probe: {param: value}}) a zoo model's default audit uses; nothing for other models."""
    entry = registry.get_entry(name)
    if entry is None:
        return None, {}
    return entry.audit.get("batch_size"), {probe: dict(p) for probe, p in entry.audit.get("probes", {}).items()}


def load_zoo_model(name: str, spec) -> ModelAdapter:
    entry = registry.get_entry(name)
    if entry is None:
        raise AuditError(f"--model {name}: no such zoo model (available: {', '.join(zoo_names())})")
    path = spec.weights or entry.checkpoint_path
    digest = sha256_of(path) if Path(path).is_file() else None
    if spec.weights is None:
        _check_shipped(entry, path, digest)
    net = entry.build()
    apply_state_dict(net, load_state_dict(path, spec.trust_model), path)
    names = spec.class_names() or list(entry.categories)
    facts = ModelFacts(name=entry.name, source="zoo", sha256=digest, weights=str(path))
    return ADAPTERS[entry.task](
        net,
        facts=facts,
        class_names=names,
        input_size=entry.input_size,
        channels=entry.channels,
        mean=spec.mean or entry.mean,
        std=spec.std or entry.std,
        preprocess=Preprocess(resize=entry.input_size),
        epsilons=entry.epsilons,
        eval_set=(entry.eval_set, entry.load_eval_set, entry.eval_limit),
    )


def _check_shipped(entry: ZooEntry, path: Path, digest: str | None) -> None:
    """The shipped checkpoint is there and is the one the registry names."""
    if digest is None:
        raise AuditError(
            f"{entry.name}: checkpoint {path} is missing; reinstall the project or rebuild it "
            f"with `audit zoo train {entry.name}`"
        )
    if digest != entry.sha256:
        raise AuditError(
            f"{entry.name}: checkpoint {path} has sha256 {digest[:12]}..., the registry expects "
            f"{entry.sha256[:12]}...; the file is corrupt or replaced (rebuild: audit zoo train {entry.name})"
        )
