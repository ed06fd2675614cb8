"""Helpers shared by the model sources: metadata from the user, class names, safe loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from auditor.errors import AuditError, first_line
from auditor.models.base import ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess, SegmenterAdapter

# Grid for models that declare none: the usual CIFAR/ImageNet-scale L-inf budgets.
DEFAULT_EPSILONS = ("1/255", "2/255", "4/255", "8/255")


@dataclass(frozen=True)
class Logits:
    """What a model that cannot describe itself must return for its task, and the adapter that wraps it."""

    adapter: type[ModelAdapter]
    dims: int  # of the output tensor
    shape: str  # the same, in words
    hint: str = ""  # added to the error when the output does not fit


# Generic models (TorchScript, torch.export, package.module:callable) can be classifiers or segmenters;
# detectors come from torchvision or ultralytics, whose outputs auditor knows how to decode.
GENERIC_TASKS: dict[str, Logits] = {
    "classify": Logits(ClassifierAdapter, 2, "N x classes logits", " (pass --task segment for a segmenter)"),
    "segment": Logits(SegmenterAdapter, 4, "N x classes x H x W logits"),
}


def load_state_dict(path: str | Path, trust_model: bool) -> dict:
    """A state dict from disk; pickled code runs only with --trust-model."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"--weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_model)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        hint = "" if trust_model else " (if you trust the file and it pickles code, pass --trust-model)"
        raise AuditError(f"--weights {path}: cannot load: {first_line(exc)}{hint}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common checkpoint layout
    if not isinstance(obj, dict):
        raise AuditError(f"--weights {path}: expected a state dict, got {type(obj).__name__}")
    return obj


def apply_state_dict(net: nn.Module, state: dict, path: str | Path) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise AuditError(f"--weights {path}: does not fit the architecture: {first_line(exc)}") from exc


def infer_num_outputs(net: nn.Module, channels: int, input_size: tuple[int, int], task: str) -> int:
    with torch.no_grad():
        out = net(torch.zeros(1, channels, *input_size))
    if isinstance(out, dict) and "out" in out:
        out = out["out"]
    logits = GENERIC_TASKS[task]
    if not isinstance(out, torch.Tensor) or out.dim() != logits.dims:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AuditError(
            f"the model returned {shape} for one image; a {task} model must return {logits.shape}{logits.hint}"
        )
    return out.shape[1]


def generic_adapter(net: nn.Module, spec, *, facts: ModelFacts) -> ModelAdapter:
    """A model that cannot describe itself: task, geometry and normalisation come from the user."""
    task = spec.task or "classify"
    if task not in GENERIC_TASKS:
        raise AuditError(
            f"--task {task}: a {facts.source} model can be audited as {' or '.join(GENERIC_TASKS)}; "
            "detectors come from torchvision or ultralytics (--model NAME, a .pt or a .yaml)"
        )
    if spec.input_size is None:
        raise AuditError(
            f"--model {spec.model}: this model does not state its input size; pass --input-size 224 (or HxW)"
        )
    mean = spec.mean or (0.0,)
    std = spec.std or (1.0,)
    channels = max(len(mean), len(std))
    if channels == 1:
        channels = _probe_channels(net, spec.input_size)
    try:
        n_out = infer_num_outputs(net, channels, spec.input_size, task)
    except AuditError:
        raise
    except Exception as exc:
        raise AuditError(
            f"--model {spec.model}: a forward pass on a {channels}x{spec.input_size[0]}x{spec.input_size[1]} "
            f"input failed: {first_line(exc)}"
        ) from exc
    names = spec.class_names() or [str(i) for i in range(n_out)]
    if len(names) != n_out:
        raise AuditError(f"--classes {spec.classes_file}: {len(names)} names but the model has {n_out} outputs")
    if spec.mean is None:
        facts.notes.append("no --mean/--std given: the model is fed [0, 1] pixels unnormalised")
    return GENERIC_TASKS[task].adapter(
        net,
        facts=facts,
        class_names=names,
        input_size=spec.input_size,
        channels=channels,
        mean=mean,
        std=std,
        preprocess=Preprocess(resize=spec.input_size),
        epsilons=DEFAULT_EPSILONS,
    )


def _probe_channels(net: nn.Module, input_size: tuple[int, int]) -> int:
    """3 unless the model only accepts 1 channel (grey models)."""
    for channels in (3, 1):
        try:
            with torch.no_grad():
                net(torch.zeros(1, channels, *input_size))
            return channels
        except Exception:
            continue
    return 3
