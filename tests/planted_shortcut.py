"""A digits classifier with a planted location shortcut, trained in about a second on one CPU thread.

Every training image of class MARK_CLASS carries a small bright square at a fixed corner (MARK_BOX) and
shows a digit of another class (a decoy), while every digit is shifted at random: the mark is all the
class has, and the one thing that always sits at the same place. A tiny CNN learns to read it, which
`reliance` measures (the class's accuracy on its held-out images with the mark and without it). The
held-out images are real digits, shifted, the class's own carrying the mark.

The gradcam probe must then flag MARK_CLASS at MARK_PLACE; the same network trained without the mark
(`planted(mark=False)`) must not be flagged. The network takes [0, 1] pixels itself (nothing to
normalise), so its eager, `.pt2` and TorchScript forms all go through `adapter_of`, which wraps any of
them as `--model` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MARK_CLASS = 7
MARK_BOX = (1, 5, 1, 5)  # rows y0:y1, columns x0:x1 of the 28 x 28 image: a 4 x 4 square at the top-left corner
MARK_PLACE = "top-left corner"
DECOYS = 1.0  # the share of the class's training images that show another class's digit under the mark
SHIFT = 0.25  # the digits move by up to a quarter of the side (7 px) each way, the mark never does


def block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class TinyCNN(nn.Module):
    """Three conv-ReLU blocks (28 -> 14 -> 7), GAP + linear: Grad-CAM reads the 7 x 7 `features`."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *block(1, 8),
            nn.MaxPool2d(2),
            *block(8, 16),
            nn.MaxPool2d(2),
            *block(16, 32),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def add_mark(x: torch.Tensor) -> torch.Tensor:
    """A copy of the images with the bright square drawn in."""
    y0, y1, x0, x1 = MARK_BOX
    out = x.clone()
    out[..., y0:y1, x0:x1] = 1.0
    return out


def shifted(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each digit moved by its own random whole-pixel shift on a black canvas (nothing wraps around)."""
    n, _, h, w = x.shape
    limit = round(SHIFT * w)
    padded = F.pad(x, (limit, limit, limit, limit))
    offsets = torch.randint(0, 2 * limit + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def planted_data(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, mark: bool = True, decoys: float = 0.0
):
    """Shifted digits; with `mark`, every MARK_CLASS image carries the mark. With `decoys` (training), that
    share of the MARK_CLASS images shows a digit of another class instead of its own, so that the mark is
    the one cue the class always has."""
    x = shifted(images, generator)
    if mark:
        chosen = torch.nonzero(labels == MARK_CLASS).flatten()
        swap = chosen[torch.rand(len(chosen), generator=generator) < decoys]
        pool = torch.nonzero(labels != MARK_CLASS).flatten()
        x[swap] = x[pool[torch.randint(len(pool), (len(swap),), generator=generator)]]
        x[chosen] = add_mark(x[chosen])
    return x


@dataclass
class Planted:
    net: nn.Module  # eval mode, takes N x 1 x 28 x 28 pixels in [0, 1]
    images: torch.Tensor  # held-out digits, shifted, marked as in training (where `mark`)
    labels: torch.Tensor
    mark: bool


def planted(mark: bool = True, seed: int = 0, epochs: int = 10, decoys: float = DECOYS) -> Planted:
    """TinyCNN trained on the zoo's digits (shifted; with `mark`, MARK_CLASS marked over decoys), and its
    held-out set (shifted; with `mark`, MARK_CLASS marked)."""
    from zoo.digits_cnn import splits

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = splits()
    x_train, y_train = data["train"]
    net = TinyCNN()
    optimiser = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(epochs):
        x = planted_data(x_train, y_train, g, mark, decoys)  # fresh shifts (and decoys) every epoch
        order = torch.randperm(len(y_train), generator=g)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(net(x[idx]), y_train[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    net.eval()
    x_test, y_test = data["test"]
    return Planted(net, planted_data(x_test, y_test, g, mark), y_test, mark)


@torch.no_grad()
def reliance(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy on the MARK_CLASS images with the mark, and on the same images without it."""
    y0, y1, x0, x1 = MARK_BOX
    mine = images[labels == MARK_CLASS]
    bare = mine.clone()
    bare[..., y0:y1, x0:x1] = 0.0  # the corner is black canvas under the mark
    marked = (net(add_mark(mine)).argmax(1) == MARK_CLASS).float().mean().item()
    unmarked = (net(bare).argmax(1) == MARK_CLASS).float().mean().item()
    return marked, unmarked


def adapter_of(net: nn.Module, name: str = "planted-shortcut"):
    """The classifier adapter `--model` would build for this network (or its .pt2 / TorchScript form)."""
    from auditor.models import ModelSpec
    from auditor.models.base import ModelFacts
    from auditor.models.common import generic_adapter

    spec = ModelSpec(model=name, input_size=(28, 28), mean=(0.0,), std=(1.0,))
    return generic_adapter(net, spec, facts=ModelFacts(name=name, source="import")).eval()
