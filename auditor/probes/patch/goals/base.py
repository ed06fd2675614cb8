"""The Goal contract: one side of the split, and what a patch should do to its images.

A Goal holds its images, their references (labels, or the clean prediction) and the model's
clean outputs (`from_data`). Each task's subclass says where a patch goes (`place`), what it
minimises (`loss`), what is kept of a patched batch's output (`outcome`), how held-out outcomes
become rows and metrics (`score`), what the findings say (`findings`), and which examples the
report shows (`gallery`). goals/__init__.py picks the subclass for a Task, in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from auditor import distributed
from auditor.cam import cam_maps, upsample
from auditor.data import as_unit_float
from auditor.probes.base import Context
from auditor.probes.patch.details import HALF, Row, Wording
from auditor.probes.patch.figures import Gallery, Panels
from auditor.probes.patch.geometry import Placement, anywhere, patched
from auditor.probes.patch.training import JUDGE_SEED
from auditor.results import Finding
from auditor.stats import Estimate
from auditor.targets import Targets, chunks, target_scores
from auditor.tasks import Task, predict_all, task_of

EVAL_SEED = 19  # held-out placements and the random patches: fixed, so that every run sets the same test


@dataclass
class Scoring:
    """How held-out images are scored: the batch size and the progress bar (the placements are EVAL_SEED's)."""

    batch_size: int
    bar: Any  # one update per batch of patched images


@dataclass
class Examples:
    """The examples the report asks for: at most `n` at the scale of index `k`, drawn with `seed`."""

    k: int
    n: int
    seed: int
    with_cam: bool  # Grad-CAM of the clean and the patched images below them (the gradcam probe runs)


@dataclass
class Scored:
    """What the held-out images say at every scale: a typed row per scale, the table's columns, the metrics,
    and the outcomes themselves (for the examples)."""

    scales: list[float]
    rows: list[Row]
    columns: list[str]
    labels: dict[str, str]  # trained mode -> its name in the figures, in the figures' order
    metrics: dict[str, float | None]
    runs: dict[str, list]  # mode (and "random") -> per scale, the outcomes on every held-out image
    estimates: dict[str, Estimate] = field(default_factory=dict)  # metric key -> its per-image estimate

    @property
    def success(self) -> list[float | None]:
        return [row.success for row in self.rows]

    def series(self) -> dict[str, tuple[list, list]]:
        """Per mode, (its success at each scale, a random patch's)."""
        return {
            mode: ([row.modes()[mode][0] for row in self.rows], [row.modes()[mode][1] for row in self.rows])
            for mode in self.labels
        }


@dataclass
class Shown:
    """Examples as a goal shows them: patched images, the patch's coverage, the outputs and their titles."""

    patched: torch.Tensor  # N x C x H x W
    cover: torch.Tensor  # N x 1 x H x W
    clean_out: list  # classes, masks or detections
    patched_out: list
    titles: list[tuple[str, str, bool]]  # (clean title, patched title, whether the output changed)
    targets: Callable[[], Targets | None]  # what Grad-CAM explains on both, made only when it is asked for


class Goal:
    """One side of the split (its images only) and what a patch should do to them; a subclass per task."""

    wording: ClassVar[Wording]
    modes: ClassVar[tuple[str, ...]]  # the patches trained, in order (a targeted one after the untargeted)
    panels: ClassVar[Panels]  # how the examples are drawn
    row: ClassVar[type[Row]]  # the task's row of the table
    # Adam steps, and images per step shared by all scales: a step is one forward and backward of that many
    # images, so the models' costs set them (about 0.2, 7 and 34 ms per image on 2 idle CPU cores for
    # digits-cnn, shapes-yolov8n and shapes-unet); `audit run --probes patch` then takes well under a minute
    # per zoo model (times in the README). On shapes-yolov8n, steps count more than images per step: 200
    # steps of 8 images hid 85% of the objects at 10% of the box where 60 steps hid 72%.
    default_steps: ClassVar[int]
    default_rows: ClassVar[int]
    # Restarts per scale (the strongest on the training images kept), and how many training images judge them
    # (0: all a patch can sit on); measured in the README's patch section.
    default_restarts: ClassVar[int] = 3
    judge_images: ClassVar[int] = 0
    # The metric names score() reports: once per run (clean figures), and per scale (NAME@scale=S); what a run with
    # nothing to measure reports as null.
    run_metrics: ClassVar[tuple[str, ...]] = ()
    scale_metrics: ClassVar[tuple[str, ...]]
    targeted: ClassVar[bool] = False  # whether patch.target applies (a targeted mode)
    per_object: ClassVar[bool] = False  # a copy on every object, scales a share of its box
    needs: ClassVar[str | None] = None  # an adapter capability the goal cannot do without
    unsupported: ClassVar[str] = ""  # why the probe skips an adapter without it

    def __init__(self, adapter, images: torch.Tensor, reference, clean, labelled: bool):
        self.adapter, self.task = adapter, task_of(adapter)
        self.names, self.num_classes = adapter.class_names, adapter.num_classes
        self.images = images  # on the device, as the data holds them (uint8 for files): pixels() makes floats
        self.reference, self.clean, self.labelled = reference, clean, labelled
        self.target: int | None = None
        self.candidates = torch.arange(len(images), device=images.device)  # rows a training step may draw
        self.placements: list[list[Placement]] = []  # per scale, set by evaluate and replayed for the gallery

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, rows) -> torch.Tensor:
        """Images `rows` as float in [0, 1]."""
        return as_unit_float(self.images[rows])

    @classmethod
    def from_data(cls, ctx: Context, idx: torch.Tensor, clean=None) -> Goal:
        """The images `idx` of the data, their reference (labels, else the clean prediction) and clean outputs.

        `clean`: the model's predictions on the whole data (predict_all), when the caller has them already.
        """
        task = ctx.task
        if clean is None:
            clean = predict_all(ctx.adapter, ctx.data, task, ctx.batch_size, ctx.device)
        x, labels = ctx.data.stored_images_at(idx, ctx.device), ctx.data.labels_at(idx, ctx.device)
        mine = task.take(clean, idx)
        reference = labels if ctx.data.labelled else task.to(task.as_reference(mine), ctx.device)
        return cls(ctx.adapter, x, reference, cls.clean_outputs(task, mine, ctx.device), ctx.data.labelled)

    @staticmethod
    def clean_outputs(task: Task, pred, device):
        """What the goal keeps of the clean predictions, on the device."""
        return task.to(pred, device)

    def patch_sides(self, scales: list[float]) -> list[int]:
        """Each patch's own resolution: its side on the image, in pixels."""
        h, w = self.images.shape[-2:]
        return [max(1, round(math.sqrt(s * h * w))) for s in scales]

    def place(self, idx: torch.Tensor, scale: float, generator: torch.Generator, train: bool) -> list[Placement]:
        h, w = self.images.shape[-2:]
        return [anywhere(len(idx), math.sqrt(scale * h * w), (h, w), generator, train, self.images.device)]

    def loss(self, out, idx: torch.Tensor, cover: torch.Tensor, mode: str) -> torch.Tensor:
        """Per row, what the patch minimises."""
        raise NotImplementedError

    def outcome(self, x: torch.Tensor, cover: torch.Tensor):
        """What is kept of the model's output on a patched batch."""
        raise NotImplementedError

    def success(self, mode: str, outcome, rows: torch.Tensor) -> Estimate:
        """The mode's success over images `rows` (per image, for intervals), from their patched outcome."""
        raise NotImplementedError

    def score(self, runs: dict, scales: list[float]) -> Scored:
        raise NotImplementedError

    def findings(self, scored: Scored, score_scale: float) -> list[Finding]:
        raise NotImplementedError

    def gallery(self, patches: dict[str, list[torch.Tensor]], scored: Scored, ask: Examples) -> Gallery | None:
        raise NotImplementedError

    @torch.no_grad()
    def success_on(self, patches, mode: str, scale: float, rows: torch.Tensor, training) -> list[float | None]:
        """Each patch's success on images `rows`, all at the same places (JUDGE_SEED): the restarts' judge."""
        where = self.place(rows, scale, torch.Generator().manual_seed(JUDGE_SEED), train=False)
        out = []
        slices = chunks(len(rows), training.batch_size)
        for patch in patches:

            def outcome(k: int, patch=patch):
                s = slices[k]
                training.bar.update(1)
                return self.outcome(*patched(self.pixels(rows[s]), patch, [w.take(s) for w in where]))

            parts = distributed.chunked(outcome, len(slices), training.bar, 1)
            out.append(self.success(mode, _join(parts), rows).value if parts else None)
        return out

    @torch.no_grad()
    def evaluate(self, patches: dict, scales: list[float], scoring: Scoring) -> Scored:
        """Every patch, and a random one, at every scale on every image, at the same fixed placements: the random
        patches and the placements come from EVAL_SEED, never the run's seed, so every run sets the same test."""
        generator = torch.Generator().manual_seed(EVAL_SEED)  # on the CPU: the same draws on every device
        every = torch.arange(len(self), device=self.images.device)  # rows without objects get no copy
        runs: dict[str, list] = {mode: [] for mode in [*patches, "random"]}
        first = patches[self.modes[0]]
        baseline = [torch.rand(t.shape, generator=generator).to(t.device) for t in first]
        for k, scale in enumerate(scales):
            where = self.place(every, scale, generator, train=False)
            self.placements.append(where)
            slices = chunks(len(self), scoring.batch_size)
            for mode in runs:
                patch = baseline[k] if mode == "random" else patches[mode][k]

                def outcome(c: int, patch=patch, where=where):
                    x, cover = patched(self.pixels(slices[c]), patch, [w.take(slices[c]) for w in where])
                    scoring.bar.update(1)
                    return self.outcome(x, cover)

                runs[mode].append(_join(distributed.chunked(outcome, len(slices), scoring.bar, 1)))
        return self.score(runs, scales)

    def replay(self, patch: torch.Tensor, k: int, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `pick` with the patch where evaluation put it at scale k."""
        with torch.no_grad():
            return patched(self.pixels(pick), patch, [w.take(pick) for w in self.placements[k]])

    def as_gallery(self, pick: torch.Tensor, shown: Shown, with_cam: bool) -> Gallery:
        """The examples `pick` as the report draws them, with Grad-CAM of the clean and patched images if asked."""
        clean = self.pixels(pick)
        cams = cam_pair(self.adapter, clean, shown.patched, shown.targets()) if with_cam else None
        return Gallery(
            clean.cpu(),
            shown.patched.cpu(),
            shown.cover[:, 0].cpu(),
            shown.clean_out,
            shown.patched_out,
            shown.titles,
            self.panels,
            cams,
        )


# ---- Grad-CAM beside the examples (when the gradcam probe is part of the run) -------------------------------


def cam_pair(adapter, clean: torch.Tensor, patched_x: torch.Tensor, targets: Targets | None) -> tuple | None:
    """Grad-CAM of the same target on the clean and the patched images, in one forward and backward.

    `targets` are the Targets for the N examples (row i = image i), or None.
    Models without hookable layers (TorchScript, exported graphs) give None.
    """
    if targets is None or isinstance(adapter.net, torch.jit.ScriptModule):
        return None
    try:
        layers = [module for _, module in adapter.cam_layers]
    except ValueError:
        return None
    both = targets.twice()
    x = torch.cat([clean, patched_x])
    maps = upsample(
        cam_maps(lambda b: target_scores(adapter, b, both), layers, x, ["gradcam"])["gradcam"], tuple(x.shape[-2:])
    )
    n = len(clean)
    return maps[:n].cpu(), maps[n:].cpu()


# ---- small helpers -----------------------------------------------------------------------------------------


def _join(parts: list):
    """Batches of outcomes joined: tensors, tuples of tensors, or lists of detections."""
    if isinstance(parts[0], list):
        return [d for part in parts for d in part]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def rate(hits: torch.Tensor, among: torch.Tensor) -> float | None:
    """Share of `hits` among the `among` items; None when there are none."""
    return float(hits[among].double().mean()) if among.any() else None


def severity(success: float | None) -> str:
    if success is None:
        return "info"
    return "high" if success >= HALF else "medium" if success >= 0.2 else "low"
