"""Model sources: one module each, one entry point (`load_model`) that picks the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditor.errors import AuditError
from auditor.models.base import ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess, TASKS

__all__ = ["ModelSpec", "load_model", "ModelAdapter", "ClassifierAdapter", "ModelFacts", "Preprocess", "TASKS"]

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
    if spec.task not in (None, "classify"):
        raise AuditError(f"--task {spec.task}: only classifiers are supported so far (detect and segment adapters are not built yet)")
    name = spec.model
    path = Path(name)
    from zoo import get_entry

    if get_entry(name) is not None:
        from auditor.models.zoo import load_zoo_model
        return load_zoo_model(get_entry(name), spec)
    if name.endswith(TORCHSCRIPT_SUFFIXES + EXPORT_SUFFIXES) or path.suffix in (".pt", ".pth"):
        if not path.is_file():
            raise AuditError(f"--model {name}: no such file")
        if name.endswith(EXPORT_SUFFIXES):
            from auditor.models.export import load_exported
            return load_exported(path, spec)
        from auditor.models.torchscript import is_torchscript, load_torchscript
        if name.endswith(TORCHSCRIPT_SUFFIXES) or is_torchscript(path):
            return load_torchscript(path, spec)
        raise AuditError(f"--model {name}: not a TorchScript archive; a bare state dict needs its architecture: "
                         "--model ARCH_NAME --weights FILE")
    if ":" in name and not path.exists():
        from auditor.models.importpath import load_import_path
        return load_import_path(name, spec)
    from auditor.models.torchvision import is_torchvision_classifier, load_torchvision
    if is_torchvision_classifier(name):
        return load_torchvision(name, spec)
    raise AuditError(f"--model {name}: unknown model; expected a zoo name (audit zoo list), a torchvision "
                     "classification model name (resnet50, vgg16, ...), a TorchScript (.ts) or torch.export (.pt2) "
                     "file, or package.module:callable")
