"""`shapes-unet`: the seed's U-Net, trained on the shapes world's pixel masks.

Contracting path of double 3x3 conv-BN-ReLU blocks with max pooling, expanding path of
transposed convolutions with skip connections, 1x1 head: Ronneberger et al. 2015, with
batch norm and "same" padding so the mask has the image's size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditor.files import sha256_of
from auditor.metrics import mean_iou_score
from zoo import shapes
from zoo.registry import ZooEntry, register

SIZE = 160
NUM_CLASSES = 1 + len(shapes.CLASSES)  # background + shapes
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
TEST_IMAGES = 200


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(
        self, in_channels: int = 3, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (16, 32, 64, 128)
    ):
        super().__init__()
        self.down = nn.ModuleList(
            [double_conv(in_channels, widths[0])] + [double_conv(a, b) for a, b in zip(widths, widths[1:])]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths, widths[1:])])
        self.merge = nn.ModuleList([double_conv(2 * a, a) for a in widths[:-1]])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, merge, skip in zip(reversed(self.up), reversed(self.merge), reversed(skips[:-1])):
            x = up(x)
            x = merge(torch.cat([skip, x[..., : skip.shape[-2], : skip.shape[-1]]], dim=1))
        return self.head(x)


def scenes(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N x 3 x H x W float in [0, 1], masks N x H x W long) generated in memory."""
    images, masks = [], []
    for i in range(n):
        s = shapes.render(shapes.scene_seed(split, i), SIZE)
        images.append(torch.from_numpy(s.image.copy()).permute(2, 0, 1))
        masks.append(torch.from_numpy(s.mask.astype(np.int64)))
    return torch.stack(images).float() / 255, torch.stack(masks)


def eval_set_path() -> Path:
    return shapes.cache_dir() / f"shapes-seg-test-{TEST_IMAGES}-v1"


def load_test_set(seed: int = 0) -> Path:
    """The held-out folder (images/ + masks/), generated on first use."""
    del seed
    return shapes.write_segmentation_set(eval_set_path(), "test", TEST_IMAGES, SIZE)


RECIPE = {
    "train_images": 480,
    "val_images": 80,
    "optimizer": "AdamW",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "batch_size": 16,
    "max_epochs": 90,
    "schedule": "cosine",
    "patience": 20,
    "clip_grad_norm": 1.0,
    "loss": "cross-entropy + soft Dice, ignore 255",
    "augment": "random 112 px crops (the net is fully convolutional), flips, 90-degree rotations",
}
CROP = 112


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # One crop window per batch: half the pixels of a full image, so an epoch costs half.
    top, left = (int(v) for v in torch.randint(0, SIZE - CROP + 1, (2,), generator=g))
    x, y = x[..., top : top + CROP, left : left + CROP], y[..., top : top + CROP, left : left + CROP]
    k = int(torch.randint(0, 4, (1,), generator=g))
    x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target, ignore_index=shapes.IGNORE)
    valid = (target != shapes.IGNORE).unsqueeze(1)
    prob = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2) * valid
    inter, total = (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))
    dice = 1 - ((2 * inter + 1) / (total + 1)).mean()
    return ce + dice


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model((x[i : i + batch] - _m()) / _s()).argmax(1) for i in range(0, len(x), batch)])


def _m():
    return torch.tensor(MEAN).view(1, 3, 1, 1)


def _s():
    return torch.tensor(STD).view(1, 3, 1, 1)


def train(
    out_path: Path, seed: int = 0, progress: Callable[[int], Any] | None = None, budget: float = 1.0
) -> dict[str, Any]:
    """The recipe. `budget` scales images and epochs (tests use a small one)."""
    r = RECIPE
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n_train, n_val = max(16, int(r["train_images"] * budget)), max(8, int(r["val_images"] * budget))
    epochs = max(2, int(r["max_epochs"] * budget))
    x_train, y_train = scenes("train", n_train)
    x_val, y_val = scenes("val", n_val)
    model = UNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    best, losses = (-1.0, None, 0), []
    bar = progress(epochs) if progress else None
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=g)
        total = 0.0
        for start in range(0, n_train, r["batch_size"]):
            idx = order[start : start + r["batch_size"]]
            x, y = _augment(x_train[idx], y_train[idx], g)
            loss = _loss(model((x - _m()) / _s()), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), r["clip_grad_norm"])
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        losses.append(total / n_train)
        val = mean_iou_score(_predict(model, x_val), y_val, NUM_CLASSES)
        if val > best[0]:
            best = (val, copy.deepcopy(model.state_dict()), epoch)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", val_miou=f"{val:.3f}")
        if epoch - best[2] >= r["patience"]:
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best[1])
    x_test, y_test = scenes("test", max(8, int(TEST_IMAGES * budget)) if budget < 1 else TEST_IMAGES)
    test = mean_iou_score(_predict(model, x_test), y_test, NUM_CLASSES)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_path)
    return {
        "path": str(out_path),
        "sha256": sha256_of(out_path),
        "miou": round(test, 4),
        "best_epoch": best[2],
        "epochs_run": epoch + 1,
        "losses": [round(v, 4) for v in losses],
    }


ENTRY = register(
    ZooEntry(
        name="shapes-unet",
        task="segment",
        description="U-Net (4 levels, skip connections, 0.48M parameters) on the synthetic shapes world, 160x160 RGB",
        build=UNet,
        checkpoint="shapes-unet.pt",
        sha256="2e0d2eb42c36492cc11c95ceb6b63fdb64ac5adf7fb291175f8bc8a6aa247a1b",
        input_size=(SIZE, SIZE),
        channels=3,
        mean=MEAN,
        std=STD,
        categories=("background",) + shapes.CLASSES,
        eval_set="shapes-seg-test",
        load_eval_set=load_test_set,
        metrics={"miou": 0.9424},
        epsilons=("1/255", "2/255", "4/255", "8/255"),
        train=train,
        recipe=RECIPE,
        # A U-Net forward+backward at 160 px costs ~30 ms per image on 2 CPU cores, and APGD takes 80 of them per
        # image over the grid. Measured on the default audit (idle, 2 cores): 24 images with the standard ensemble
        # took 213 s and 2.5 GiB. Square (25 queries per image and ε) broke no image APGD had left, at any ε, and
        # its per-image choices moved the pooled mIoU up, not down; it still runs on every image when a masking
        # check fails. So: APGD alone, 16 images in batches of 8, actmax at half its steps, one patch per scale.
        eval_limit=16,
        audit={
            "batch_size": 8,
            "probes": {"attacks": {"ensemble": "fast"}, "actmax": {"steps": 48}, "patch": {"restarts": 1}},
        },
    )
)
