"""Model sources: one module each, one entry point (`load_model`) that picks the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchvision.models import list_models

from auditor.errors import AuditError, did_you_mean
from auditor.models import ultralytics
from auditor.models.base import TASKS, ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess, SegmenterAdapter
from auditor.models.export import load_exported
from auditor.models.importpath import load_import_path
from auditor.models.torchscript import is_torchscript, load_torchscript
from auditor.models.torchvision import load_torchvision, torchvision_task
from auditor.models.zoo import is_zoo_name, load_zoo_model, zoo_names

__all__ = [
    "ModelSpec",
    "load_model",
    "ModelAdapter",
    "ClassifierAdapter",
    "SegmenterAdapter",
    "ModelFacts",
    "Preprocess",
    "TASKS",
]

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
EXPORT_SUFFIXES = (".pt2",)


@dataclass(frozen=True)
class ModelSpec:
    """What the user said about the model; fields left None come from the model itself."""

    model: str
    weights: str | None = None
    task: str | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes_file: str | None = None
    trust_model: bool = False
    offline: bool = False

    def class_names(self) -> list[str] | None:
        if self.classes_file is None:
            return None
        path = Path(self.classes_file)
        if not path.is_file():
            raise AuditError(f"--classes {path}: no such file (expected one class name per line)")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise AuditError(f"--classes {path}: the file has no class names (expected one per line)")
        return names


def load_model(spec: ModelSpec) -> ModelAdapter:
    if spec.task is not None and spec.task not in TASKS:
        raise AuditError(f"--task {spec.task}: expected one of {', '.join(TASKS)}")
    name = spec.model
    path = Path(name)
    if is_zoo_name(name):
        return load_zoo_model(name, spec)
    if path.suffix in (".yaml", ".yml"):  # a file, or a name ultralytics ships (yolov8n.yaml)
        return ultralytics.load_yaml_model(path, spec)
    if path.suffix in MODEL_FILE_SUFFIXES and path.is_file():
        return _load_file(path, spec)
    if ":" in name and not path.exists():
        return load_import_path(name, spec)
    if torchvision_task(name) is not None:
        return load_torchvision(name, spec)
    if ultralytics.is_ultralytics_name(path.name) and path.suffix in ("", ".pt"):
        return ultralytics.load_checkpoint_model(ultralytics.resolve_named_weights(name, spec), spec)
    if path.suffix in MODEL_FILE_SUFFIXES:
        raise AuditError(f"--model {name}: no such file")
    raise AuditError(
        f"--model {name}: unknown model{_suggest_model(name)}; expected a zoo name (audit zoo list), a torchvision model "
        "name (resnet50, fasterrcnn_resnet50_fpn, deeplabv3_resnet50, ...), an ultralytics name or "
        "file (yolov8n, best.pt, yolov8n.yaml), a TorchScript (.ts) or torch.export (.pt2) file, or "
        "package.module:callable"
    )


MODEL_FILE_SUFFIXES = TORCHSCRIPT_SUFFIXES + EXPORT_SUFFIXES + (".pt", ".pth")


def _load_file(path: Path, spec) -> ModelAdapter:
    name = str(path)
    if name.endswith(EXPORT_SUFFIXES):
        return load_exported(path, spec)
    if name.endswith(TORCHSCRIPT_SUFFIXES) or is_torchscript(path):
        return load_torchscript(path, spec)
    return ultralytics.load_checkpoint_model(path, spec)


def _suggest_model(name: str) -> str:
    """A close zoo, torchvision or ultralytics name for a misspelt --model."""
    return did_you_mean(name, zoo_names() + list(list_models()) + sorted(ultralytics.known_names()))
