"""The optimisation: every target of a run as a row of ONE batch, one forward and one backward a step.

Hooks read every layer's activations from that forward, and each row ascends its own
objective: a class row its pre-softmax logit, a channel row the mean over all positions of
its rectified activation. The images are Fourier-parameterised and jittered every step
(parameterisation.py); Adam ascends the objectives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from auditor.probes.actmax.channels import reading
from auditor.probes.actmax.parameterisation import FourierImage, transform
from auditor.probes.base import Context

LEAK = 0.01  # slope of the channel objective below zero while optimising


@dataclass
class Optimised:
    """The batch at the end: class rows first, then each layer's channels in order."""

    images: torch.Tensor  # on the CPU
    start: torch.Tensor  # each row's objective at the first step
    final: torch.Tensor  # and on the final image, without jitter
    probs: torch.Tensor | None  # the class rows' softmax


def optimise(ctx: Context, classes: list[int], targets: list, canvas, steps: int, lr: float, bar) -> Optimised:
    """All targets as rows of one batch: class rows first, then each layer's channels in order.

    Returns the final images and every row's objective at the first step and at the end.
    Forward passes: `steps`, plus one on the final images without transforms.
    """
    adapter, device = ctx.adapter, ctx.device
    generator = ctx.generator()
    rows = len(classes) + sum(len(c) for _, c in targets)
    image = FourierImage(rows, adapter.channels, canvas, generator, device)
    class_ids = torch.tensor(classes, dtype=torch.long, device=device)
    channels = [(u.name, torch.tensor(c, device=device)) for u, c in targets]
    optimiser = torch.optim.Adam([image.spectrum], lr=lr)
    with reading(adapter.net, [u for u, _ in targets]) as acts:
        with torch.enable_grad():
            for step in range(steps):
                values = _objectives(adapter(transform(image(), generator)), acts, class_ids, channels, LEAK)
                if step == 0:
                    start = values.detach()
                # the gradient of the spectrum alone: the model's weights get no .grad
                (image.spectrum.grad,) = torch.autograd.grad(-values.sum(), [image.spectrum])
                optimiser.step()
                bar.update(1)
        with torch.no_grad():
            final_images = image()
            out = adapter(final_images)
            final = _objectives(out, acts, class_ids, channels)
    probs = out[: len(classes)].softmax(1).cpu() if classes else None
    return Optimised(images=final_images.cpu(), start=start.cpu(), final=final.cpu(), probs=probs)


def _objectives(out, acts, class_ids, channels, leak: float = 0.0) -> torch.Tensor:
    """Row i's own objective: its class logit, or its channel's rectified mean over all positions.

    Channels are read before their activation function and rectified here: with `leak` > 0
    (while optimising) a channel switched off everywhere still has a gradient towards on.
    """
    n = len(class_ids)
    parts = [out[torch.arange(n, device=class_ids.device), class_ids]] if n else []
    row = n
    for name, chans in channels:
        k = len(chans)
        act = acts[name][row : row + k]
        parts.append(F.leaky_relu(act[torch.arange(k, device=act.device), chans], leak).mean(dim=(1, 2)))
        row += k
    return torch.cat(parts)


def data_statistics(ctx: Context, targets: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Over the evaluation images: the highest objective each target channel reaches, and the predicted classes.

    One forward per batch of ctx.batch_size.
    """
    adapter, with_classes = ctx.adapter, ctx.task.class_logits
    maxes = {u.name: torch.full((len(c),), -math.inf) for u, c in targets}
    predicted = []
    with reading(adapter.net, [u for u, _ in targets]) as acts, torch.no_grad():
        for x, _ in ctx.data.batches(ctx.batch_size, ctx.device):
            out = adapter(x)
            if with_classes:
                predicted.append(out.argmax(1).cpu())
            for u, chans in targets:
                v = acts[u.name][:, chans].relu().mean(dim=(2, 3)).float().cpu()
                maxes[u.name] = torch.maximum(maxes[u.name], v.max(0).values)
    return maxes, torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)
