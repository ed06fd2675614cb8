"""torchvision source: any classification model name, with its Weights enum's transforms and categories."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from auditor.errors import AuditError
from auditor.models.base import ClassifierAdapter, ModelAdapter, ModelFacts, Preprocess
from auditor.models.common import apply_state_dict, first_line, load_state_dict
from zoo.registry import sha256_of

# The grid of RobustBench's ImageNet L-inf track ends at 4/255, so its figures compare.
IMAGENET_EPSILONS = ("0.5/255", "1/255", "2/255", "4/255")
DOWNLOAD_TIMEOUT_S = 30


def is_torchvision_classifier(name: str) -> bool:
    import torchvision.models

    return name in torchvision.models.list_models(module=torchvision.models)


def cached_weights_path(weights) -> Path:
    """Where torch.hub keeps the file (TORCH_HOME, else ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_torchvision(name: str, spec) -> ModelAdapter:
    import torchvision.models

    weights = torchvision.models.get_model_weights(name).DEFAULT
    categories = list(weights.meta["categories"])
    names = spec.class_names() or categories
    if spec.weights is not None:
        net = torchvision.models.get_model(name, weights=None, num_classes=len(names))
        state = load_state_dict(spec.weights, spec.trust_model)
        apply_state_dict(net, state, spec.weights)
        weights_file, digest = Path(spec.weights), sha256_of(spec.weights)
    else:
        weights_file = cached_weights_path(weights)
        if not weights_file.is_file():
            if spec.offline:
                raise AuditError(_missing(name, weights, weights_file, "--offline was given"))
            _download(name, weights, weights_file)
        if spec.classes_file is not None and len(names) != len(categories):
            raise AuditError(f"--classes {spec.classes_file}: {len(names)} names, but {name}'s ImageNet weights have "
                             f"{len(categories)} classes (fine-tuned weights: add --weights PATH)")
        net = torchvision.models.get_model(name, weights=weights)
        digest = None  # torchvision checks the hash prefix in the file name on download
    preset = weights.transforms()
    crop = tuple(preset.crop_size) * (2 if len(preset.crop_size) == 1 else 1)
    facts = ModelFacts(name=name, source="torchvision", sha256=digest, weights=str(weights_file))
    facts.notes.append(f"torchvision weights {weights}: resize {preset.resize_size[0]}, centre crop {crop[0]}")
    return ClassifierAdapter(
        net, facts=facts, class_names=names, input_size=crop, channels=3,
        mean=spec.mean or tuple(preset.mean), std=spec.std or tuple(preset.std),
        preprocess=Preprocess(resize=preset.resize_size[0], crop=crop), epsilons=IMAGENET_EPSILONS,
    )


def _missing(name: str, weights, path: Path, why: str) -> str:
    return (f"{name}: ImageNet weights not cached at {path} and not downloadable ({why}); fetch {weights.url} "
            f"to that path, or pass --weights PATH")


def _download(name: str, weights, path: Path) -> None:
    """Into torch.hub's cache, hash-checked, as torchvision would; silent unless on a terminal."""
    import re

    match = re.search(torch.hub.HASH_REGEX, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # fail instead of hanging on a dead network
    try:
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=os.isatty(2))
    except Exception as exc:  # URLError, HTTPError, timeouts, hash mismatch: all mean "no usable file"
        if path.exists():
            path.unlink()
        raise AuditError(_missing(name, weights, path, first_line(exc))) from exc
    finally:
        socket.setdefaulttimeout(old)
