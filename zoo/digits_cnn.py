"""`digits-cnn`: the MNIST-style classifier, trained on scikit-learn's bundled digits.

scikit-learn ships the 1,797 8x8 handwritten digits of the UCI set, so the model and its
held-out set need no download. Each digit is upscaled to 20x20 and centred on a 28x28
canvas, as MNIST digits are.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from auditor.files import sha256_of
from zoo.registry import ZooEntry, register

SPLIT_SEED = 0  # fixes which digits are held out; independent of the training seed
TEST_SHARE = 0.25
VAL_SHARE = 0.15


class DigitsCNN(nn.Module):
    """Three conv-batchnorm-ReLU blocks with max pooling, dropout and a GAP + linear head.

    The global-average-pooled head makes the model CAM-ready; ReLUs are not in place so
    that guided attribution methods can hook them.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.2):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        c1, c2, c3 = widths
        self.features = nn.Sequential(
            block(1, c1),
            nn.MaxPool2d(2),  # 28 -> 14
            block(c1, c2),
            nn.MaxPool2d(2),  # 14 -> 7
            block(c2, c3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def _digits_as_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    images = F.pad(images, (4, 4, 4, 4))  # centre on 28x28 like MNIST
    return images, torch.tensor(bunch.target, dtype=torch.long)


def splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stratified train / val / test split, fixed by SPLIT_SEED."""
    images, labels = _digits_as_mnist()
    idx = torch.arange(len(labels)).numpy()
    rest, test = train_test_split(idx, test_size=TEST_SHARE, stratify=labels.numpy(), random_state=SPLIT_SEED)
    train, val = train_test_split(rest, test_size=VAL_SHARE, stratify=labels.numpy()[rest], random_state=SPLIT_SEED)
    return {name: (images[part], labels[part]) for name, part in (("train", train), ("val", val), ("test", test))}


def load_test_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    del seed  # the held-out split does not depend on the run's seed
    return splits()["test"]


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 12.0,
    scale: tuple[float, float] = (0.9, 1.1),
    shift: float = 0.08,
) -> torch.Tensor:
    """A different random rotation, scale and shift per image, in one grid_sample call.

    torchvision's RandomAffine draws one set of parameters per call, so on a batch every
    image would get the same transform; per-sample parameters need either a Python loop
    over images or this.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    s = torch.empty(n).uniform_(*scale, generator=generator)
    t = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


RECIPE = {
    "optimizer": "AdamW",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "max_epochs": 60,
    "schedule": "cosine",
    "patience": 12,
    "clip_grad_norm": 1.0,
    "augment": "per-sample random affine (rotation 12 deg, scale 0.9-1.1, shift 8%)",
    "seed": 0,
}


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy on pixel-space images, normalised here as the zoo adapter does."""
    model.eval()
    with torch.no_grad():
        logits = model((images - MEAN[0]) / STD[0])
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def train(out_path: Path, seed: int = 0, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """The recipe: AdamW, cosine schedule, gradient clipping, augmentation, early stopping on val loss."""
    r = RECIPE
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = splits()
    x_train, y_train = data["train"]
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=r["max_epochs"])
    best = (math.inf, None, 0)  # val loss, state, epoch
    bar = progress(r["max_epochs"]) if progress else None
    with deterministic():
        for epoch in range(r["max_epochs"]):
            model.train()
            order = torch.randperm(len(y_train), generator=generator)
            for start in range(0, len(order), r["batch_size"]):
                idx = order[start : start + r["batch_size"]]
                x = random_affine(x_train[idx], generator)
                loss = F.cross_entropy(model((x - MEAN[0]) / STD[0]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), r["clip_grad_norm"])
                optimizer.step()
            scheduler.step()
            val_loss, val_acc = evaluate(model, *data["val"])
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy(model.state_dict()), epoch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val_acc=f"{val_acc:.3f}")
            if epoch - best[2] >= r["patience"]:
                break
    if bar is not None:
        bar.close()
    model.load_state_dict(best[1])
    _, test_acc = evaluate(model, *data["test"])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_path)
    return {
        "path": str(out_path),
        "sha256": sha256_of(out_path),
        "accuracy": round(test_acc, 4),
        "best_epoch": best[2],
        "epochs_run": epoch + 1,
    }


class deterministic:
    """torch's deterministic algorithms on inside the block, as they were outside it (the recipes use it)."""

    def __enter__(self):
        self._was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self._was)


MEAN = (0.1307,)  # MNIST's statistics; the digits canvas has a similar ink share
STD = (0.3081,)

ENTRY = register(
    ZooEntry(
        name="digits-cnn",
        task="classify",
        description="MNIST-style CNN (3 conv-BN-ReLU blocks, GAP head) on scikit-learn's digits, 28x28 grey",
        build=DigitsCNN,
        checkpoint="digits-cnn.pt",
        sha256="a7fedd4dbe8a53f6364b5c63fa0b3453ace72af7ab215f0d12e927d1192cf9f6",
        input_size=(28, 28),
        channels=1,
        mean=MEAN,
        std=STD,
        categories=tuple(str(d) for d in range(10)),
        eval_set="sklearn-digits-test",
        load_eval_set=load_test_set,
        metrics={"accuracy": 0.9956},
        epsilons=("0.01", "0.02", "0.05", "0.1", "0.3"),
        train=train,
        recipe=RECIPE,
    )
)
