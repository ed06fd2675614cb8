"""Typed registry of zoo models, in the spirit of torchvision's ``Weights``.

An entry carries everything needed to use a model: how to build it, its checkpoint and
hash, its input geometry and normalisation, its categories, its evaluation set, the
held-out metric its recipe reached, and the epsilon grid the attack probes use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def checkpoint_path(self) -> Path:
        return CHECKPOINT_DIR / self.checkpoint

    @property
    def available(self) -> bool:
        """True when the shipped checkpoint is present and matches its hash: usable offline."""
        path = self.checkpoint_path
        return path.is_file() and sha256_of(path) == self.sha256


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"zoo entry {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def _load_builtin() -> None:
    # Imported for their side effect of registering; kept lazy so `import zoo` is cheap.
    import zoo.digits_cnn  # noqa: F401
    import zoo.shapes_unet  # noqa: F401
    import zoo.shapes_yolo  # noqa: F401


def list_entries() -> list[ZooEntry]:
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def get_entry(name: str) -> ZooEntry | None:
    _load_builtin()
    return _REGISTRY.get(name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
