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

from auditor import distributed
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
    # Sharded (auditor.distributed), each rank optimises its share of the rows: every row ascends its own objective
    # with its own Adam state, so the shares are independent. Every rank draws the whole batch's numbers and keeps
    # its rows' (the same draws as one process makes).
    mine = distributed.share(rows) if distributed.active() else slice(0, rows)
    image = FourierImage(rows, adapter.channels, canvas, generator, device, mine)
    class_ids = torch.tensor(classes, dtype=torch.long, device=device)
    channels = [(u.name, torch.tensor(c, device=device)) for u, c in targets]
    optimiser = torch.optim.Adam([image.spectrum], lr=lr)

    def optimise_mine():
        """This rank's rows (all of them in one process): final images, objectives at the first step and at the
        end, and the class rows' softmax."""
        start = final = probs = torch.zeros(0, device=device)
        with reading(adapter.net, [u for u, _ in targets]) as acts:
            with torch.enable_grad():
                for step in range(steps):
                    if mine.stop > mine.start:  # (a rank without rows draws nothing more: nothing of it is used)
                        jittered = transform(image(), generator, rows, mine)
                        values = _objectives(adapter(jittered), acts, class_ids, channels, LEAK, mine)
                        if step == 0:
                            start = values.detach()
                        # the gradient of the spectrum alone: the model's weights get no .grad
                        (image.spectrum.grad,) = torch.autograd.grad(-values.sum(), [image.spectrum])
                        optimiser.step()
                    bar.update(1)
            with torch.no_grad():
                final_images = image()
                if mine.stop > mine.start:
                    out = adapter(final_images)
                    final = _objectives(out, acts, class_ids, channels, rows=mine)
                    if classes:  # (class rows exist only where the output is one logit row per image)
                        probs = out[: max(0, min(mine.stop, len(classes)) - mine.start)].softmax(1)
        return tuple(t.cpu() for t in (final_images, start, final, probs))

    shares = distributed.chunked(lambda _: optimise_mine(), distributed.size())  # rank r computes share r
    final_images, start, final, probs = (
        torch.cat([s[i] for s in shares if len(s[i])] or [shares[0][i]]) for i in range(4)
    )
    probs = probs if classes else None
    return Optimised(images=final_images, start=start, final=final, probs=probs)


def _objectives(out, acts, class_ids, channels, leak: float = 0.0, rows: slice | None = None) -> torch.Tensor:
    """Each row's own objective: its class logit, or its channel's rectified mean over all positions; `rows`: the
    batch's rows that `out` and `acts` hold (default all: class rows first, then each layer's channels in order).

    Channels are read before their activation function and rectified here: with `leak` > 0
    (while optimising) a channel switched off everywhere still has a gradient towards on.
    """
    n = len(class_ids)
    lo, hi = (0, n + sum(len(c) for _, c in channels)) if rows is None else (rows.start, rows.stop)
    parts = []
    a, b = lo, min(hi, n)
    if b > a:
        parts.append(out[torch.arange(b - a, device=class_ids.device), class_ids[a:b]])
    row = n
    for name, chans in channels:
        k = len(chans)
        a, b = max(lo, row), min(hi, row + k)
        if b > a:
            act = acts[name][a - lo : b - lo]
            picked = act[torch.arange(b - a, device=act.device), chans[a - row : b - row]]
            parts.append(F.leaky_relu(picked, leak).mean(dim=(1, 2)))
        row += k
    return torch.cat(parts)


def data_statistics(ctx: Context, targets: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Over the evaluation images: the highest objective each target channel reaches, and the predicted classes.

    One forward per batch of ctx.batch_size.
    """
    adapter, with_classes = ctx.adapter, ctx.task.class_logits
    with reading(adapter.net, [u for u, _ in targets]) as acts, torch.no_grad():

        def one_batch(b: int):
            x = ctx.data.images_at(slice(b * ctx.batch_size, (b + 1) * ctx.batch_size), ctx.device)
            out = adapter(x)
            peaks = {
                u.name: acts[u.name][:, chans].relu().mean(dim=(2, 3)).float().max(0).values.cpu()
                for u, chans in targets
            }
            return (out.argmax(1).cpu() if with_classes else None), peaks

        batches = distributed.chunked(one_batch, -(-len(ctx.data) // ctx.batch_size))
    maxes = {u.name: torch.full((len(c),), -math.inf) for u, c in targets}
    for _, peaks in batches:
        for name, v in peaks.items():
            maxes[name] = torch.maximum(maxes[name], v)
    predicted = [p for p, _ in batches if p is not None]
    return maxes, torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)
