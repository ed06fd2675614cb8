"""Typed registry of zoo models, in the spirit of torchvision's ``Weights``.

An entry carries everything needed to use a model: how to build it, its checkpoint and
hash, its input geometry and normalisation, its categories, its evaluation set, the
held-out metric its recipe reached, and the epsilon grid the attack probes use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.files import sha256_of

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str
    description: str
    build: Callable[[], Any]  # returns an untrained nn.Module of the right shape
    checkpoint: str  # file name under zoo/checkpoints
    sha256: str
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categories: tuple[str, ...]
    eval_set: str  # name of the held-out set
    load_eval_set: Callable[[int], Any]  # seed -> (images in [0,1], labels)
    metrics: dict[str, float]  # held-out metrics the recipe reached, keyed by metric
    epsilons: tuple[str, ...]  # L-inf grid for attacks, in pixel space
    train: Callable[..., Any]  # the recipe: train(out_path, seed, progress) -> report dict
    recipe: dict[str, Any] = field(default_factory=dict)
    eval_limit: int | None = None  # images a default audit draws (seeded) from the set; None: all
    # The default audit's own settings for a model whose every pass costs more than the probes' defaults assume:
    # "batch_size" and "probes" ({probe: {param: value}}), beneath --batch-size, --config and --set.
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> Path:
        return CHECKPOINT_DIR / self.checkpoint

    @property
    def available(self) -> bool:
        """True when the shipped checkpoint is present and matches its hash: usable offline."""
        path = self.checkpoint_path
        return path.is_file() and sha256_of(path) == self.sha256


_REGISTRY: dict[str, ZooEntry] = {}
# The built-in entries and the recipe module that registers each when imported. Looking a name up
# imports only its own recipe (a recipe imports auditor, ultralytics or scikit-learn as it needs).
RECIPES = {
    "digits-cnn": "zoo.digits_cnn",
    "digits-robust": "zoo.digits_robust",
    "shapes-lite0": "zoo.shapes_lite0",
    "shapes-lite0-scratch": "zoo.shapes_lite0",
    "shapes-unet": "zoo.shapes_unet",
    "shapes-yolov8n": "zoo.shapes_yolo",
}


def register(entry: ZooEntry) -> ZooEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"zoo entry {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def names() -> list[str]:
    """Every zoo model's name, without importing any recipe."""
    return sorted(set(RECIPES) | set(_REGISTRY))


def list_entries() -> list[ZooEntry]:
    for module in RECIPES.values():
        importlib.import_module(module)
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def get_entry(name: str) -> ZooEntry | None:
    """The entry called `name` (its recipe imported now), or None."""
    if name in RECIPES and name not in _REGISTRY:
        importlib.import_module(RECIPES[name])
    return _REGISTRY.get(name)
