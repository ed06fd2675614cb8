"""torchvision source: classification, detection and segmentation models by name.

Each model comes with its Weights enum: the URL and hash of its weights (cached by
torch.hub under TORCH_HOME), its preprocessing and its category names.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torchvision.models

from auditor.errors import AuditError, first_line
from auditor.files import sha256_of
from auditor.models.base import ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess, SegmenterAdapter
from auditor.models.common import apply_state_dict, load_state_dict
from auditor.models.torchvision_detect import TorchvisionDetectorAdapter

# The grid of RobustBench's ImageNet L-inf track ends at 4/255, so its figures compare.
IMAGENET_EPSILONS = ("0.5/255", "1/255", "2/255", "4/255")
DOWNLOAD_TIMEOUT_S = 30
DETECTION_SIZE = 512  # square input for detectors: images are batched, and the model resizes again inside


def torchvision_task(name: str) -> str | None:
    """classify, detect or segment for a torchvision model name; None when it is not one."""
    for task, family in FAMILIES.items():
        if name in torchvision.models.list_models(module=family.module):
            return task
    return None


def cached_weights_path(weights) -> Path:
    """Where torch.hub keeps the file (TORCH_HOME, else ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_torchvision(name: str, spec) -> ModelAdapter:
    task = torchvision_task(name)
    if spec.task is not None and spec.task != task:  # what the user said against what the model is
        raise AuditError(f"--model {name} is a torchvision {task} model, not {spec.task}")
    family = FAMILIES[task]
    weights = torchvision.models.get_model_weights(name).DEFAULT
    categories = list(weights.meta["categories"])
    names = spec.class_names() or categories
    if spec.weights is not None:
        state = load_state_dict(spec.weights, spec.trust_model)
        net = torchvision.models.get_model(name, weights=None, num_classes=len(names), **family.builder_args(state))
        apply_state_dict(net, state, spec.weights)
        weights_file, digest = Path(spec.weights), sha256_of(spec.weights)
    else:
        weights_file = cached_weights_path(weights)
        if not weights_file.is_file():
            if spec.offline:
                raise AuditError(_missing(name, weights, weights_file, "--offline was given"))
            _download(name, weights, weights_file)
        if spec.classes_file is not None and len(names) != len(categories):
            raise AuditError(
                f"--classes {spec.classes_file}: {len(names)} names, but {name}'s weights have "
                f"{len(categories)} classes (fine-tuned weights: add --weights PATH)"
            )
        net = torchvision.models.get_model(name, weights=weights, **family.builder_args(None))
        digest = None  # torchvision checks the hash prefix in the file name on download
    facts = ModelFacts(name=name, source="torchvision", sha256=digest, weights=str(weights_file))
    # with --weights the preset only supplies the preprocessing, and the note must not claim its weights
    origin = (
        f"weights {weights_file.name}, preprocessing of {weights}"
        if spec.weights is not None
        else f"torchvision weights {weights}"
    )
    return family.adapter(net, spec, facts=facts, names=names, preset=weights.transforms(), origin=origin)


def _image_adapter(adapter_class: type[ModelAdapter]) -> Callable[..., ModelAdapter]:
    """Classifiers and segmenters: the weights' own preset (resize, centre crop, mean and std)."""

    def make(net, spec, *, facts: ModelFacts, names: list[str], preset, origin: str) -> ModelAdapter:
        resize = preset.resize_size[0]
        crop = tuple(getattr(preset, "crop_size", None) or (resize,))
        crop = crop * 2 if len(crop) == 1 else crop
        facts.notes.append(f"{origin}: resize {resize}, centre crop {crop[0]}")
        return adapter_class(
            net,
            facts=facts,
            class_names=names,
            input_size=crop,
            channels=3,
            mean=spec.mean or tuple(preset.mean),
            std=spec.std or tuple(preset.std),
            preprocess=Preprocess(resize=resize, crop=crop),
            epsilons=IMAGENET_EPSILONS,
        )

    return make


def _detector_adapter(net, spec, *, facts: ModelFacts, names: list[str], preset, origin: str) -> ModelAdapter:
    """Detectors: a square input; the model normalises and resizes inside."""
    size = spec.input_size or (DETECTION_SIZE, DETECTION_SIZE)
    facts.notes.append(f"{origin}: images resized to {size[0]}x{size[1]}; the model normalises and resizes inside")
    return TorchvisionDetectorAdapter(
        net,
        facts=facts,
        class_names=names,
        input_size=size,
        channels=3,
        mean=(0.0,),
        std=(1.0,),
        preprocess=Preprocess(resize=size),
        epsilons=IMAGENET_EPSILONS,
    )


def _no_builder_args(state: dict | None) -> dict:
    return {}


def _without_backbone(state: dict | None) -> dict:
    """Detection and segmentation builders would fetch ImageNet backbone weights unless told not to."""
    return {"weights_backbone": None}


def _segmentation_args(state: dict | None) -> dict:
    """No backbone download; with --weights, the auxiliary head exactly when the state dict has one."""
    args = _without_backbone(state)
    if state is not None:
        args["aux_loss"] = any(k.startswith("aux_classifier") for k in state)
    return args


def _missing(name: str, weights, path: Path, why: str) -> str:
    return (
        f"{name}: weights not cached at {path} and not downloadable ({why}); fetch {weights.url} "
        f"to that path, or pass --weights PATH"
    )


def _download(name: str, weights, path: Path) -> None:
    """Into torch.hub's cache, hash-checked, as torchvision would; silent unless on a terminal."""
    match = re.search(torch.hub.HASH_REGEX, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail instead of hanging on a dead network
    try:
        torch.hub.download_url_to_file(
            weights.url, str(path), hash_prefix=match.group(1) if match else None, progress=os.isatty(2)
        )
    except Exception as exc:  # URLError, HTTPError, timeouts, hash mismatch: all mean "no usable file"
        if path.exists():
            path.unlink()
        raise AuditError(_missing(name, weights, path, first_line(exc))) from exc
    finally:
        socket.setdefaulttimeout(old)


@dataclass(frozen=True)
class Family:
    """What differs between torchvision's classification, detection and segmentation models."""

    module: ModuleType  # where torchvision lists them
    builder_args: Callable[[dict | None], dict]  # extra get_model arguments (given the --weights state dict)
    adapter: Callable[..., ModelAdapter]  # (net, spec, facts=, names=, preset=, origin=) -> the adapter


FAMILIES: dict[str, Family] = {  # in the order a name is looked up
    "classify": Family(torchvision.models, _no_builder_args, _image_adapter(ClassifierAdapter)),
    "detect": Family(torchvision.models.detection, _without_backbone, _detector_adapter),
    "segment": Family(torchvision.models.segmentation, _segmentation_args, _image_adapter(SegmenterAdapter)),
}
