"""The maps of every row: the gradient methods in one forward and one backward per batch of rows, CAM
from a GAP + linear head where the network ends in one (the engine: auditor.cam); or, for a model with no
layer to tap, an attribution from the input (input_maps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from auditor.cam import cam_maps, class_activation_maps, gap_linear_head, upsample
from auditor.probes.gradcam.input_maps import coarse_of, input_maps
from auditor.targets import Targets, chunks, target_scores
from auditor.tasks import Task


@dataclass
class Maps:
    methods: list[str]  # the maps shown, in the order asked for (CAM only where there is a head)
    primary: str  # the gradient method the checks judge: Grad-CAM where it was asked for
    coarse: dict[str, torch.Tensor]  # method -> rows x h x w, at the layer's resolution
    full: dict[str, torch.Tensor]  # method -> rows x H x W, the image's size (the shown ones and the primary)
    cam: bool  # CAM from the GAP + linear head


def row_maps(
    adapter,
    modules: list[torch.nn.Module],
    x: torch.Tensor,
    t: Targets,
    methods: list[str],
    batch_size: int,
    progress: Callable[[int], object],
) -> dict[str, torch.Tensor]:
    """Gradient maps for every row: one forward and one backward per batch of rows."""
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    if not methods:
        return {}
    for s in chunks(len(t), batch_size):
        sub = t.take(s)
        out = cam_maps(lambda b, sub=sub: target_scores(adapter, b, sub), modules, x[sub.image], methods)
        for m in methods:
            parts[m].append(out[m])
        progress(s.stop - s.start)
    return {m: torch.cat(v) for m, v in parts.items()}


def explain(
    adapter,
    task: Task,
    modules: list[torch.nn.Module],
    x: torch.Tensor,
    t: Targets,
    asked: tuple[str, ...],
    batch_size: int,
    progress: Callable[[int], object],
) -> Maps:
    """Every asked method's maps of every row. CAM reads the GAP's input, so it needs one layer and a
    classifier whose head is GAP + linear; the gradient methods always run, since the sanity check needs
    one even where CAM is all that is shown."""
    head = None
    if "cam" in asked and task.class_logits and len(modules) == 1:
        head = gap_linear_head(adapter.net, modules[0], adapter.example_input(2), adapter)
    methods = [m for m in asked if m != "cam" or head is not None]
    gradient = [m for m in methods if m != "cam"] or ["gradcam"]
    coarse = row_maps(adapter, modules, x, t, gradient, batch_size, progress)
    if head is not None:
        coarse["cam"] = torch.cat(
            [
                class_activation_maps(head, modules[0], x[t.image[s]], t.cls[s], adapter)
                for s in chunks(len(t), batch_size)
            ]
        )
    primary = "gradcam" if "gradcam" in gradient else gradient[0]
    size = tuple(x.shape[-2:])
    full = {m: upsample(coarse[m], size) for m in methods}  # the order asked for
    full.setdefault(primary, upsample(coarse[primary], size))
    return Maps(methods, primary, coarse, full, head is not None)


def explain_from_input(
    adapter,
    x: torch.Tensor,
    t: Targets,
    method: str,
    samples: int,
    batch_size: int,
    progress: Callable[[int], object],
) -> Maps:
    """One input attribution's maps of every row (auditor.probes.gradcam.input_maps): shown and judged."""
    full = input_maps(adapter, x, t, method, samples, batch_size, progress)
    return Maps([method], method, {method: coarse_of(full)}, {method: full}, cam=False)
