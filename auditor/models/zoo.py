"""Zoo source: a registry entry plus its shipped, hash-checked checkpoint."""

from __future__ import annotations

from pathlib import Path

from auditor.errors import AuditError
from auditor.models.base import ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess, SegmenterAdapter
from auditor.models.common import apply_state_dict, load_state_dict
from zoo.registry import ZooEntry, sha256_of


def load_zoo_model(entry: ZooEntry, spec) -> ModelAdapter:
    if entry.task == "detect":
        from auditor.models.ultralytics import DetectorAdapter as adapter_class
    else:
        adapter_class = {"classify": ClassifierAdapter, "segment": SegmenterAdapter}[entry.task]
    path = spec.weights or entry.checkpoint_path
    digest = sha256_of(path) if Path(path).is_file() else None
    if spec.weights is None:
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
    net = entry.build()
    apply_state_dict(net, load_state_dict(path, spec.trust_model), path)
    names = spec.class_names() or list(entry.categories)
    facts = ModelFacts(name=entry.name, source="zoo", sha256=digest, weights=str(path))
    return adapter_class(
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
