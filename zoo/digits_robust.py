"""`digits-robust`: digits-cnn's network and data, adversarially trained.

The recipe is PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant
to Adversarial Attacks", ICLR 2018): each batch is replaced by its L-inf PGD adversary (random
start in the eps-ball, signed-gradient steps, projection), found against the current model,
and the model is trained on those. The attack works in pixel space ([0, 1]) with the
normalisation inside, as the zoo adapter feeds images to the model and as the audit attacks it.

Departures from the paper: eps ramps up linearly over the first epochs (a small model trained
at the full budget from the start stays near chance for a long time), and the checkpoint kept
is the epoch with the best PGD accuracy on the validation split (Rice et al. 2020: robust
accuracy peaks and then falls as adversarial training goes on).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.files import sha256_of
from zoo.digits_cnn import ENTRY as DIGITS_CNN
from zoo.digits_cnn import MEAN, STD, DigitsCNN, deterministic, evaluate, splits
from zoo.registry import register

RECIPE = {
    "optimizer": "AdamW",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "max_epochs": 30,
    "schedule": "cosine",
    "clip_grad_norm": 1.0,
    "train_eps": 0.15,  # pixel-space L-inf budget of the inner maximisation
    "eps_ramp_epochs": 8,  # eps grows linearly from 0 to train_eps over these epochs
    "pgd_steps": 7,
    "pgd_step_scale": 2.5,  # step size = scale * eps / steps (Madry's 2.5 eps / steps)
    "select_eps": 0.1,  # checkpoint kept: best validation accuracy under PGD at this budget
    "select_steps": 10,
    "seed": 0,
}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN[0]) / STD[0]


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    generator: torch.Generator,
    step_scale: float = 2.5,
) -> torch.Tensor:
    """L-inf PGD with a uniform random start in the eps-ball, on pixel-space images in [0, 1]."""
    if eps <= 0:
        return x
    step = step_scale * eps / steps
    x_adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(normalize(x_adv)), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def robust_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, seed: int = 0
) -> float:
    """Accuracy under `pgd` (in eval mode), batched."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(labels), 256):
        x, y = images[start : start + 256], labels[start : start + 256]
        x_adv = pgd(model, x, y, eps, steps, generator)
        with torch.no_grad():
            correct += (model(normalize(x_adv)).argmax(1) == y).sum().item()
    return correct / len(labels)


def _epoch(model, optimizer, data, eps: float, r: dict[str, Any], generator: torch.Generator) -> None:
    """One pass over the training split on PGD adversaries found against the model as it is."""
    x_train, y_train = data
    order = torch.randperm(len(y_train), generator=generator)
    for start in range(0, len(order), r["batch_size"]):
        idx = order[start : start + r["batch_size"]]
        x, y = x_train[idx], y_train[idx]
        model.eval()  # the adversary sees the model as it predicts: running BN statistics, no dropout
        x_adv = pgd(model, x, y, eps, r["pgd_steps"], generator, r["pgd_step_scale"])
        model.train()
        loss = F.cross_entropy(model(normalize(x_adv)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), r["clip_grad_norm"])
        optimizer.step()


def train(
    out_path: Path, seed: int = 0, progress: Callable[[int], Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """The recipe (RECIPE, any key overridden by keyword: a short run is `max_epochs=1`)."""
    r = {**RECIPE, **overrides}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = splits()
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=r["max_epochs"])
    best = (-1.0, None, 0)  # validation robust accuracy, state, epoch
    bar = progress(r["max_epochs"]) if progress else None
    with deterministic():
        for epoch in range(r["max_epochs"]):
            eps = r["train_eps"] * min(1.0, (epoch + 1) / max(1, r["eps_ramp_epochs"]))
            _epoch(model, optimizer, data["train"], eps, r, generator)
            scheduler.step()
            val_robust = robust_accuracy(model, *data["val"], r["select_eps"], r["select_steps"], seed)
            if val_robust > best[0]:
                best = (val_robust, copy.deepcopy(model.state_dict()), epoch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(eps=f"{eps:.3f}", val_robust=f"{val_robust:.3f}")
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
        "val_pgd_accuracy": round(best[0], 4),
        "best_epoch": best[2],
        "epochs_run": r["max_epochs"],
    }


# digits-cnn's network, input, normalisation, classes and held-out set; its own weights, figures and recipe.
ENTRY = register(
    dataclasses.replace(
        DIGITS_CNN,
        name="digits-robust",
        description="digits-cnn's network and data, PGD adversarially trained (Madry et al. 2018) at L-inf 0.15",
        checkpoint="digits-robust.pt",
        sha256="751e33d5424170441e317e78e8317d5754ed9bb7097d1b74b0607e4c674c333d",
        metrics={"accuracy": 0.9644},
        epsilons=("0.02", "0.05", "0.1", "0.15", "0.2"),
        train=train,
        recipe=RECIPE,
    )
)
