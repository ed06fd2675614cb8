"""`patch`: adversarial patches, trained on one part of the data and scored on images they never saw.

Classifiers: a universal adversarial patch (Brown, Mané, Roy, Abadi & Gilmer 2017, "Adversarial
Patch", arXiv:1712.09665): one patch per scale, pasted at a random place, rotation and size on
every training image and ascended with Adam, to turn any image into one target class
(targeted) or away from its own class (untargeted). Detectors: a patch that hides the objects
it sits on (Thys, Van Ranst & Goedemé 2019, "Fooling automated surveillance cameras:
adversarial patches to attack person detection", CVPR Workshops): pasted on every object, it
pushes down the scores of the detector's candidates for that object. Segmenters: a patch pasted
anywhere that changes the predicted class of the pixels outside it.

Departures from the papers, all deliberate:
- square patches, not Brown's circles, so that a scale is exactly the share of area covered;
  rotated up to ±ROTATION degrees, and resized by SIDE_JITTER while training;
- `scale` is the share of the image's area for classifiers and segmenters, and of each object's
  box area for detectors: a patch as big as a small object hides it by occlusion alone;
- YOLOv8 has no objectness score (Thys et al. minimised YOLOv2's): the highest class score
  stands in for it, through its logit (a saturated sigmoid has no gradient), on every candidate
  whose box overlaps the object (MATCH_IOU), not on the maximum alone, because NMS would keep
  the runner-up;
- the default target is chosen by the untargeted patch (`choose_target`);
- a random patch of the same size is scored beside each trained one, so that what occlusion
  does is not read as an attack.

The split: a seeded `held_out` share of the data is set aside before anything is trained
(`split`); the training `Goal` holds the other images only, so the patches and the choice of
the target never see a held-out image.

Engine. ART's AdversarialPatchPyTorch pastes the patch image by image in a Python loop
(torchvision `perspective` and `affine` per sample, numpy random draws) and takes numpy in.
Measured on digits-cnn, 2 CPU cores, the same 30 Adam steps of 64 images with one 9 x 9 px
patch (best of 6 interleaved runs): ART 1.86 s, this loop 0.41 s, the model's own 30 forward
and backward passes 0.40 s. ART spends three quarters of its time pasting; this loop runs at
0.96 of the model's forward+backward, 4.5x ART. So the hot loop is the project's own: one
`affine_grid` + `grid_sample` pastes a patch on a whole batch, every scale's patch trains in
ONE forward and backward per step, and everything stays on ctx.device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from auditor.data import as_unit_float, seeded_subset
from auditor.errors import did_you_mean
from auditor.models.base import BOX_TARGETS, SHOW_CONF, TASKS
from auditor.probes.base import Context, Figures, Probe
from auditor.results import Finding, ProbeResult
from auditor.targets import best_box_targets, class_targets, mask_targets, target_scores
from auditor.tasks import task_of

ROTATION = 20.0  # degrees either way: a patch stuck on by hand, on an upright scene
SIDE_JITTER = (0.8, 1.2)  # training: the side varies by this factor, so the patch works at about its size
BOX_JITTER = 0.15  # detectors, training: the patch centre moves up to this share of the box from its centre
MATCH_IOU = 0.3  # detectors: candidates whose box overlaps an object this much can still report it
HIDE_CONF = 0.1  # detectors: such candidates are pushed below this score (shown boxes start at SHOW_CONF)
HALF = 0.5  # min_scale_for_half: the smallest scale whose success rate reaches this
NO_BETTER = 0.05  # a trained patch within this of a random one has found no attack worth the name
# (Adam steps, images per step shared by all scales) by task: a step is one forward and backward of
# that many images, so the models' costs set them (about 0.2, 7 and 34 ms per image on 2 idle CPU cores
# for digits-cnn, shapes-yolov8n and shapes-unet); `audit run --probes patch` then takes well under a
# minute per zoo model (times in the README). On shapes-yolov8n, steps count more than images per
# step: 200 steps of 8 images hid 85% of the objects at 10% of the box where 60 steps hid 72%.
DEFAULTS = {"classify": (150, 64), "detect": (120, 16), "segment": (60, 8)}
MODES = {"classify": ("untargeted", "targeted"), "detect": ("hide",), "segment": ("untargeted",)}


class PatchProbe(Probe):
    name = "patch"
    template = "probes/patch.html.j2"
    report_order = 20
    description = "adversarial patches at several sizes, trained on one split and scored on held-out images"
    tasks = TASKS
    # clean_/patched_ recall and miou and min_scale_for_half: higher is better
    lower_is_better = ("success_rate", "untargeted_success_rate", "recall_drop", "miou_drop")

    @dataclass
    class Params:
        scales: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)  # patch area / image area (detectors: / box area)
        score_scale: float = 0.1  # score = 1 - success rate at this scale (added to the scales if missing)
        target: str = ""  # classifiers: a class name or index; empty: chosen by the untargeted patch
        steps: int = 0  # Adam steps per patch; 0: the task's default (DEFAULTS)
        rows: int = 0  # images per step, shared by the scales; 0: the task's default; at most --batch-size
        lr: float = 0.2  # Adam, on pixel values in [0, 1] (0.05 left shapes-yolov8n's patch near a random one)
        held_out: float = 0.5  # share of the data set aside for scoring, never trained on
        gallery: int = 6  # examples in the report

        def __post_init__(self):
            bad = [s for s in (*self.scales, self.score_scale) if not 0 < s < 1]
            if bad or not self.scales:
                raise ValueError(
                    f"scales and score_scale are shares of the area in (0, 1), got {bad[0] if bad else 'no scales'}"
                )
            if not 0 < self.held_out < 1:
                raise ValueError(f"held_out must lie in (0, 1), got {self.held_out}")
            for name in ("steps", "rows", "gallery"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be 0 (automatic) or more, got {getattr(self, name)}")
            if self.lr <= 0:
                raise ValueError(f"lr must be positive, got {self.lr}")

    def skip_reason(self, adapter) -> str | None:
        if adapter.task == "detect" and not adapter.supports(BOX_TARGETS):
            return "hiding objects needs a detector whose candidates are read from its head (ultralytics)"
        return super().skip_reason(adapter)

    def check(self, adapter) -> None:
        self._given_target(adapter)

    def _given_target(self, adapter) -> int | None:
        """The class index of patch.target (a name or an index); None when the probe chooses."""
        text = self.params.target.strip()
        if not text:
            return None
        if adapter.task != "classify":
            raise ValueError(f"target: targeted patches are for classifiers; this model is a {adapter.task} model")
        names = adapter.class_names
        if text in names:
            return names.index(text)
        if text.isdigit() and int(text) < len(names):
            return int(text)
        raise ValueError(
            f"target: {text!r} is neither a class name{did_you_mean(text, names)} nor an index below {len(names)}"
        )

    def run(self, ctx: Context) -> ProbeResult:
        p, adapter, task = self.params, ctx.adapter, ctx.adapter.task
        if len(ctx.data) < 2:
            raise ValueError(f"patch needs at least 2 images (one to train on, one held out), got {len(ctx.data)}")
        scales = sorted(set(p.scales) | {p.score_scale})
        steps, rows = p.steps or DEFAULTS[task][0], min(p.rows or DEFAULTS[task][1], ctx.batch_size)
        train_idx, test_idx = split(len(ctx.data), p.held_out, ctx.seed)
        train, test = GOALS[task].from_data(ctx, train_idx), GOALS[task].from_data(ctx, test_idx)
        modes = MODES[task]
        chunks = -(-len(test) // ctx.batch_size)
        bar = ctx.progress(steps * len(modes) + chunks * len(scales) * (len(modes) + 1), self.name)
        generator = ctx.generator()
        patches, target, choice = self._train(adapter, train, test, scales, steps, rows, generator, ctx.batch_size, bar)
        # Untrained patches of the same sizes: what covering that much of the image does by itself.
        baseline = [torch.rand(t.shape, generator=generator, device=t.device) for t in patches[modes[0]]]
        scored = test.evaluate(adapter, patches, baseline, scales, ctx.seed, ctx.batch_size, bar)
        bar.close()
        return self._result(ctx, train, test, scales, scored, patches, target, choice, steps, rows)

    def _train(self, adapter, train, test, scales, steps, rows, generator, batch_size, bar):
        """Each mode's patches in turn; the targeted ones after the untargeted, which choose their target."""
        patches: dict[str, list[torch.Tensor]] = {}
        target, choice = None, None
        for mode in MODES[adapter.task]:
            if mode == "targeted":
                target, choice = self._given_target(adapter), "given"
                if target is None:
                    target, choice = (
                        choose_target(adapter, train, patches["untargeted"][-1], scales[-1], generator, batch_size),
                        "auto",
                    )
                train.target = test.target = target
            patches[mode] = train_patches(adapter, train, scales, mode, steps, rows, self.params.lr, generator, bar)
        return patches, target, choice

    def _result(self, ctx, train, test, scales, scored, patches, target, choice, steps, rows) -> ProbeResult:
        p, adapter, modes = self.params, ctx.adapter, MODES[ctx.adapter.task]
        success = scored["success"]
        metrics = dict(scored["metrics"])
        reached = [s for s, v in zip(scales, success) if v is not None and v >= HALF]
        metrics["min_scale_for_half"] = reached[0] if reached else None
        at_score = success[scales.index(p.score_scale)]
        details = {
            "task": adapter.task,
            "scales": [scale_label(s) for s in scales],
            "columns": scored["columns"],
            "rows": scored["rows"],
            "what": test.what,
            "score_scale": scale_label(p.score_scale),
            "min_scale_for_half": metrics["min_scale_for_half"],
            "train_images": len(train),
            "trained_on": len(train.candidates),
            "held_out_images": len(test),
            "steps": steps,
            "images_per_step": rows,
            "lr": p.lr,
            "rotation": ROTATION,
            "side_jitter": list(SIDE_JITTER),
            "label_free": not ctx.data.labelled,
            "modes": list(modes),
            "target": None,
        }
        if target is not None:
            details["target"] = {"index": target, "name": adapter.class_names[target], "choice": choice}
        findings = test.findings(scales, scored, p.score_scale)
        findings += self._versus_random(scored, scales.index(p.score_scale), modes[-1], steps)
        if target is not None:
            how = (
                "given by patch.target"
                if choice == "given"
                else "chosen as the class the untargeted patch turned most training images into"
            )
            findings.append(Finding("info", f"target class {adapter.class_names[target]!r} ({how})"))
        if metrics["min_scale_for_half"] is None:
            success = _first_lower(test.what["success"])
            findings.append(
                Finding(
                    "info",
                    f"no patch size tested (up to {scale_label(scales[-1])} of the "
                    f"{test.what['area']}) reaches {HALF:.0%} {success} on held-out images: "
                    "min_scale_for_half is null",
                )
            )
        if len(train.candidates) == 0:
            findings.append(
                Finding(
                    "medium",
                    f"none of the {len(train)} training images has an object to put a "
                    "patch on: the patches stayed untrained",
                )
            )
        findings.append(
            Finding(
                "info",
                f"patches trained on {len(train)} images ({steps} Adam steps of {rows} "
                f"images shared by {len(scales)} sizes) and scored on {len(test)} held-out "
                "images they never saw",
            )
        )
        artifacts, captions, cam = self._figures(ctx, test, scales, scored, patches)
        details["captions"], details["gradcam"] = captions, cam
        score = None if at_score is None else min(max(1.0 - at_score, 0.0), 1.0)
        return ProbeResult(
            status="ok",
            score=score,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(artifacts),
            details=details,
        )

    @staticmethod
    def _versus_random(scored, k, mode, steps) -> list[Finding]:
        """Say so when the trained patch barely beats a random one: the loss is then occlusion, not an attack."""
        values, baseline = scored["series"][mode]
        trained, random = values[k], baseline[k]
        if trained is None or random is None or trained - random >= NO_BETTER:
            return []
        how = "no better" if trained <= random else "little better"
        return [
            Finding(
                "medium",
                f"the trained patch does {how} than a random patch of the same size "
                f"({trained:.0%} vs {random:.0%} success): what the model loses there is occlusion "
                f"rather than an attack; more steps (--set patch.steps={2 * steps}) may find a "
                "stronger patch",
                key=True,
            )
        ]

    def _figures(self, ctx, test, scales, scored, patches) -> tuple[list[str], dict[str, str], bool]:
        from auditor import patch_figures

        figures = Figures(ctx)
        save = figures.save

        save(
            "patches.png",
            "The trained patches at their own pixel size (enlarged), each with its success rate on held-out images",
            patch_figures.draw_patches,
            patches,
            scales,
            scored,
        )
        save(
            "success.png",
            "Success rate against patch size on held-out images (solid); dotted: a random patch "
            "of the same size at the same places",
            patch_figures.draw_success,
            scales,
            scored,
            test.what,
            HALF,
        )
        cam = False
        gallery = (
            None
            if self.params.gallery == 0
            else test.gallery(
                ctx.adapter,
                patches,
                scales.index(self.params.score_scale),
                self.params.gallery,
                scored,
                ctx.seed,
                "gradcam" in ctx.probes,
            )
        )
        if gallery is not None:
            cam = gallery.cams is not None
            save(
                "examples.png",
                f"Held-out images without and with the {scale_label(self.params.score_scale)} "
                f"patch ({test.what['area']} area), and the model's output"
                + (
                    f"; below, Grad-CAM of {test.what['cam']} on both (the gradcam probe is in this run)" if cam else ""
                ),
                patch_figures.draw_examples,
                ctx.adapter,
                gallery,
            )
        path, rel = ctx.artifact("patches.pt")  # the patches themselves, to print or to test a defence with
        torch.save({mode: {f"{s:g}": t.cpu() for s, t in zip(scales, ts)} for mode, ts in patches.items()}, path)
        figures.artifacts.append(rel)
        return figures.artifacts, figures.captions, cam


def scale_label(scale: float) -> str:
    return f"{100 * scale:g}%"


def split(n: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices), disjoint, from a seeded permutation; each side gets at least one."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_test = min(max(round(n * held_out), 1), n - 1)
    return order[n_test:].sort().values, order[:n_test].sort().values


# ---- geometry --------------------------------------------------------------------------------------------


@dataclass
class Placement:
    """One copy of a patch on each row: centre (x, y) and side in input pixels, angle in radians.

    `extent` is the side, in pixels, of the square tile the copy is drawn into: large enough for
    the biggest copy at any angle, so that only those pixels are sampled and written.
    """

    centre: torch.Tensor  # R x 2
    side: torch.Tensor  # R
    angle: torch.Tensor  # R
    extent: int
    on: torch.Tensor | None = None  # R bool: the rows that get this copy (detectors: images with fewer objects)

    def take(self, rows) -> Placement:
        return Placement(
            self.centre[rows],
            self.side[rows],
            self.angle[rows],
            self.extent,
            None if self.on is None else self.on[rows],
        )


def tile_extent(largest_side: float) -> int:
    """A tile that holds a square of this side at any rotation (its diagonal), with a pixel to spare each way."""
    return math.ceil(largest_side * math.sqrt(2)) + 2


def paste(x: torch.Tensor, patch: torch.Tensor, where: Placement) -> tuple[torch.Tensor, torch.Tensor]:
    """x with one copy of the patch on every row, and the share of each pixel it covers (R x 1 x H x W)."""
    return patched(x, patch, [where])


def patched(x: torch.Tensor, patch: torch.Tensor, where: list[Placement]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every copy pasted in turn (detectors: one per object slot), and the coverage of all of them.

    Each copy touches only its tile: the images are flattened with one spare pixel at the end
    that takes whatever part of a tile falls outside the image, so a copy is one gather, a blend
    and one scatter of tile-sized tensors instead of whole-image operations.
    """
    n, c, h, w = x.shape
    flat = torch.cat([x.flatten(2), x.new_zeros(n, c, 1)], 2)
    cover = x.new_zeros(n, 1, h * w + 1)
    for copy in where:
        index, colour, share = _tile(patch, copy, (h, w))
        index_c = index.expand(-1, c, -1)
        current = flat.gather(2, index_c)
        flat = flat.scatter(2, index_c, current * (1 - share) + colour)
        cover = cover.scatter_reduce(2, index, share.detach(), "amax")  # geometry only: no gradient needed
    return flat[..., : h * w].reshape(n, c, h, w), cover[..., : h * w].reshape(n, 1, h, w)


def _tile(patch: torch.Tensor, where: Placement, size: tuple[int, int]):
    """(flat image index R x 1 x T², patch colour R x C x T² weighted by coverage, coverage R x 1 x T²) of each tile.

    The affine map takes each tile pixel to the patch's own coordinates (-1..1 inside it);
    sampling the patch and a plane of ones with zero padding gives the colours already weighted
    by coverage, so the edges blend and the gradient reaches every texel.
    """
    h, w = size
    t = where.extent
    n = len(where.side)
    origin = torch.floor(where.centre - t / 2)  # tile's top-left pixel, x and y
    cos, sin = torch.cos(where.angle), torch.sin(where.angle)
    k = 2 / where.side
    dx, dy = origin[:, 0] + t / 2 - where.centre[:, 0], origin[:, 1] + t / 2 - where.centre[:, 1]
    theta = torch.stack(
        [
            torch.stack([k * cos * t / 2, k * sin * t / 2, k * (cos * dx + sin * dy)], 1),
            torch.stack([-k * sin * t / 2, k * cos * t / 2, k * (cos * dy - sin * dx)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, 1, t, t], align_corners=False)
    source = torch.cat([patch, torch.ones_like(patch[:1])]).expand(n, -1, -1, -1)
    sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False).flatten(2)
    steps = torch.arange(t, device=origin.device)
    rows = origin[:, 1, None].long() + steps  # n x t
    cols = origin[:, 0, None].long() + steps
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    if where.on is not None:
        inside = inside & where.on[:, None, None]
    index = torch.where(inside, rows[:, :, None] * w + cols[:, None, :], h * w).flatten(1)[:, None]
    keep = inside.flatten(1)[:, None].to(sampled.dtype)
    return index, sampled[:, :-1] * keep, sampled[:, -1:] * keep


def anywhere(n: int, side: float, size: tuple[int, int], generator: torch.Generator, train: bool) -> Placement:
    """A random place and rotation per row, the rotated patch kept inside the image where it fits."""
    device = generator.device
    u = torch.rand(n, 4, generator=generator, device=device)
    sides = torch.full((n,), float(side), device=device)
    if train:
        sides = sides * (SIDE_JITTER[0] + (SIDE_JITTER[1] - SIDE_JITTER[0]) * u[:, 0])
    angle = torch.deg2rad((2 * u[:, 1] - 1) * ROTATION)
    half = sides / 2 * (angle.cos().abs() + angle.sin().abs())  # half the rotated square's extent
    h, w = size
    lo_x, lo_y = half.clamp_max(w / 2), half.clamp_max(h / 2)
    centre = torch.stack([lo_x + (w - 2 * lo_x) * u[:, 2], lo_y + (h - 2 * lo_y) * u[:, 3]], 1)
    return Placement(centre, sides, angle, tile_extent(side * (SIDE_JITTER[1] if train else 1)))


def away_from(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """-log(1 - p_reference), per row (and pixel): falls to zero as the reference class loses, never explodes."""
    own = F.one_hot(reference.long(), logits.shape[1]).movedim(-1, 1).bool()
    return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(own, -float("inf")), 1)


# ---- training ---------------------------------------------------------------------------------------------


def train_patches(
    adapter,
    goal: Goal,
    scales: list[float],
    mode: str,
    steps: int,
    rows: int,
    lr: float,
    generator: torch.Generator,
    bar,
) -> list[torch.Tensor]:
    """One patch per scale, all trained together: each step, every patch on its own images, ONE forward+backward.

    Only the training goal's images are ever drawn (`goal.candidates`).
    """
    device = goal.images.device
    patches = [
        torch.rand(adapter.channels, s, s, generator=generator, device=device).requires_grad_(True)
        for s in goal.patch_sides(scales)
    ]
    optimiser = torch.optim.Adam(patches, lr=lr)
    pool = goal.candidates
    per = max(1, min(rows // len(scales), len(pool)))
    if len(pool) == 0:  # nothing to sit on (a detector's split without objects): the patches stay as drawn
        bar.update(steps)
        return [patch.detach() for patch in patches]
    with torch.enable_grad():
        for _ in range(steps):
            images, covers, picked = [], [], []
            for patch, scale in zip(patches, scales):
                idx = pool[torch.randperm(len(pool), generator=generator, device=device)[:per]]
                x, cover = patched(goal.pixels(idx), patch, goal.place(idx, scale, generator, train=True))
                images.append(x)
                covers.append(cover)
                picked.append(idx)
            loss = goal.loss(adapter(torch.cat(images)), torch.cat(picked), torch.cat(covers), mode).mean()
            grads = torch.autograd.grad(loss, patches)  # the patches' alone: the model's weights get no .grad
            for patch, grad in zip(patches, grads):
                patch.grad = grad
            optimiser.step()
            with torch.no_grad():
                for patch in patches:
                    patch.clamp_(0, 1)
            bar.update(1)
    return [patch.detach() for patch in patches]


@torch.no_grad()
def choose_target(
    adapter, train: ClassifyGoal, patch: torch.Tensor, scale: float, generator: torch.Generator, batch_size: int
) -> int:
    """The class easiest to reach, read off what the untargeted patch (largest scale) already does.

    An untargeted patch drifts each image to whichever class is nearest for it; the class it
    drifts most training images to is the cheapest target, at the cost of one forward over the
    training split. If it changes no prediction, the class most often second in the clean
    logits stands in. Held-out images play no part.
    """
    idx = train.candidates
    where = train.place(idx, scale, generator, train=False)
    votes = torch.zeros(adapter.num_classes, dtype=torch.long, device=idx.device)
    for s in _chunks(len(idx), batch_size):
        pred = adapter(patched(train.pixels(idx[s]), patch, [w.take(s) for w in where])[0]).argmax(1)
        votes += torch.bincount(pred[pred != train.clean[idx[s]]], minlength=adapter.num_classes)
    if votes.sum() == 0:
        for s in _chunks(len(idx), batch_size):
            logits = adapter(train.pixels(idx[s]))
            runner_up = logits.scatter(1, train.clean[idx[s], None], -float("inf")).argmax(1)
            votes += torch.bincount(runner_up, minlength=adapter.num_classes)
    return int(votes.argmax())


# ---- what a patch does, by task ----------------------------------------------------------------------------


@dataclass
class Gallery:
    """Examples for the report: clean and patched images, the model's outputs, and Grad-CAM maps if asked for."""

    clean: torch.Tensor  # N x C x H x W
    patched: torch.Tensor
    cover: torch.Tensor  # N x H x W, the patch's coverage
    clean_out: list  # classes, masks or detections
    patched_out: list
    titles: list[tuple[str, str, bool]]  # (clean title, patched title, whether the output changed)
    cams: tuple[torch.Tensor, torch.Tensor] | None = None  # (clean, patched) N x H x W


class Goal:
    """One side of the split (its images only) and what a patch should do to them; a subclass per task.

    Subclasses say where a patch goes (`place`), what it minimises (`loss`), what is kept of a
    patched batch's output (`outcome`), how held-out outcomes become metrics (`score`), and
    which examples the report shows (`gallery`).
    """

    what: dict[str, str] = {}  # "success": the success rate in words, "area": what a scale is a share of

    def __init__(self, adapter, images: torch.Tensor, reference, clean, labelled: bool):
        self.names, self.num_classes = adapter.class_names, adapter.num_classes
        self.images = images  # as the data holds them (uint8: a quarter of float32's memory), on the device
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
    def from_data(cls, ctx: Context, idx: torch.Tensor) -> Goal:
        """The images `idx` of the data, their reference (labels, else the clean prediction) and clean outputs."""
        x, labels = _gather(ctx, idx)
        with torch.no_grad():
            clean = cls.predict_clean(ctx.adapter, x, ctx.batch_size)
        reference = labels if ctx.data.labelled else cls.label_free(clean)
        return cls(ctx.adapter, x, reference, clean, ctx.data.labelled)

    @staticmethod
    def predict_clean(adapter, x, batch_size):
        return torch.cat([adapter(as_unit_float(x[s])).argmax(1) for s in _chunks(len(x), batch_size)])

    @staticmethod
    def label_free(clean):
        return clean.clone()

    def patch_sides(self, scales: list[float]) -> list[int]:
        """Each patch's own resolution: its side on the image, in pixels."""
        h, w = self.images.shape[-2:]
        return [max(1, round(math.sqrt(s * h * w))) for s in scales]

    def place(self, idx: torch.Tensor, scale: float, generator: torch.Generator, train: bool) -> list[Placement]:
        h, w = self.images.shape[-2:]
        return [anywhere(len(idx), math.sqrt(scale * h * w), (h, w), generator, train)]

    def loss(self, out, idx: torch.Tensor, cover: torch.Tensor, mode: str) -> torch.Tensor:
        """Per row, what the patch minimises."""
        raise NotImplementedError

    def outcome(self, adapter, x: torch.Tensor, cover: torch.Tensor):
        raise NotImplementedError

    def score(self, runs: dict, scales: list[float]) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self,
        adapter,
        patches: dict[str, list[torch.Tensor]],
        baseline: list[torch.Tensor],
        scales: list[float],
        seed: int,
        batch_size: int,
        bar,
    ) -> dict:
        """Every patch, and the random one, at every scale on every image, at the same seeded placements."""
        generator = torch.Generator(device=self.images.device).manual_seed(seed + 1)
        every = torch.arange(len(self), device=self.images.device)  # rows without objects get no copy
        runs: dict[str, list] = {mode: [] for mode in [*patches, "random"]}
        for k, scale in enumerate(scales):
            where = self.place(every, scale, generator, train=False)
            self.placements.append(where)
            for mode in runs:
                patch = baseline[k] if mode == "random" else patches[mode][k]
                parts = []
                for s in _chunks(len(self), batch_size):
                    x, cover = patched(self.pixels(s), patch, [w.take(s) for w in where])
                    parts.append(self.outcome(adapter, x, cover))
                    bar.update(1)
                runs[mode].append(_join(parts))
        return self.score(runs, scales)

    def replay(self, patch: torch.Tensor, k: int, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `pick` with the patch where evaluation put it at scale k."""
        with torch.no_grad():
            return patched(self.pixels(pick), patch, [w.take(pick) for w in self.placements[k]])


class ClassifyGoal(Goal):
    what = {
        "success": "Targeted success rate",
        "area": "image",
        "axis": "success rate (held-out images)",
        "cam": "the class the patched image is given",
    }

    def loss(self, out, idx, cover, mode):
        if mode == "targeted":
            return F.cross_entropy(out, torch.full_like(idx, self.target), reduction="none")
        return away_from(out, self.clean[idx])

    def outcome(self, adapter, x, cover):
        return adapter(x).argmax(1)

    def score(self, runs, scales):
        clean, t = self.clean, self.target
        can_turn = clean != t  # targeted: images not predicted as the target already
        correct = clean == self.reference  # untargeted: images the model gets right (label-free: all)
        metrics, rows, sides = {}, [], self.patch_sides(scales)
        for k, s in enumerate(scales):
            tgt, unt, rnd = runs["targeted"][k], runs["untargeted"][k], runs["random"][k]
            rates = [
                _rate(tgt == t, can_turn),
                _rate(rnd == t, can_turn),
                _rate(unt != clean, correct),
                _rate(rnd != clean, correct),
            ]
            metrics[f"success_rate@scale={s:g}"] = rates[0]
            metrics[f"untargeted_success_rate@scale={s:g}"] = rates[2]
            rows.append([scale_label(s), f"{sides[k]}×{sides[k]}", *rates])
        return {
            "metrics": metrics,
            "rows": rows,
            "runs": runs,
            "sides": sides,
            "success": [r[2] for r in rows],
            "series": {
                "targeted": ([r[2] for r in rows], [r[3] for r in rows]),
                "untargeted": ([r[4] for r in rows], [r[5] for r in rows]),
            },
            "labels": {"targeted": f"targeted → {self.names[t]}", "untargeted": "untargeted"},
            "eligible": (int(can_turn.sum()), int(correct.sum())),
            "columns": [
                "patch area",
                "patch px",
                f"targeted: → {self.names[t]}",
                "random patch",
                "untargeted",
                "random patch",
            ],
        }

    def findings(self, scales, scored, score_scale):
        _, _, turned, random_turned, changed, random_changed = scored["rows"][scales.index(score_scale)]
        can_turn, correct = scored["eligible"]
        findings = []
        if turned is not None:
            findings.append(
                Finding(
                    _severity(turned),
                    f"a patch covering {scale_label(score_scale)} of the image "
                    f"turns {turned:.0%} of {can_turn} held-out images into "
                    f"{self.names[self.target]!r} (a random patch of that size: "
                    f"{random_turned:.0%})",
                    key=True,
                )
            )
        if changed is not None:
            which = "correctly classified " if self.labelled else ""
            findings.append(
                Finding(
                    "info",
                    f"untargeted, a patch of the same size changes the prediction of "
                    f"{changed:.0%} of {correct} {which}held-out images (a random patch: "
                    f"{random_changed:.0%})",
                )
            )
        return findings

    def gallery(self, adapter, patches, k, n, scored, seed, with_cam) -> Gallery | None:
        """Held-out images the targeted patch turns (failures too where there are too few successes)."""
        can_turn = self.clean != self.target
        turned = torch.nonzero((scored["runs"]["targeted"][k] == self.target) & can_turn).flatten()
        pick = _seeded_pick(turned, n, seed)
        if len(pick) < n:
            rest = torch.nonzero(can_turn & ~torch.isin(torch.arange(len(self), device=can_turn.device), pick))
            pick = torch.cat([pick, _seeded_pick(rest.flatten(), n - len(pick), seed)]).sort().values
        if len(pick) == 0:
            return None
        x, cover = self.replay(patches["targeted"][k], k, pick)
        with torch.no_grad():
            before, after = self.clean[pick], adapter(x).argmax(1)
        titles = []
        for i, a, b in zip(pick.tolist(), before.tolist(), after.tolist()):
            truth = self.names[int(self.reference[i])]
            titles.append(
                (
                    self.names[a] + (f" (true {truth})" if self.labelled and truth != self.names[a] else ""),
                    f"→ {self.names[b]}",
                    a != b,
                )
            )
        cams = cam_pair(adapter, self.pixels(pick), x, class_targets(after)) if with_cam else None
        return Gallery(
            self.pixels(pick).cpu(),
            x.cpu(),
            cover[:, 0].cpu(),
            before.cpu().tolist(),
            after.cpu().tolist(),
            titles,
            cams,
        )


class SegmentGoal(Goal):
    what = {
        "success": "Relative mIoU drop outside the patch",
        "area": "image",
        "axis": "relative mIoU drop outside",
        "cam": "the main class outside the patch (its clean mask)",
    }

    def loss(self, out, idx, cover, mode):
        outside = 1 - cover[:, 0]
        per_pixel = away_from(out, self.clean[idx])
        return (per_pixel * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)

    def outcome(self, adapter, x, cover):
        return adapter(x).argmax(1), cover[:, 0] > 0  # any pixel the patch touches counts as under it

    def score(self, runs, scales):
        from auditor.metrics import mean_iou_score

        reference = self.reference.long()
        metrics = {"clean_miou": mean_iou_score(self.clean, reference, self.num_classes)}
        rows, sides = [], self.patch_sides(scales)
        for k, s in enumerate(scales):
            (adv, under), (rnd, _) = runs["untargeted"][k], runs["random"][k]
            outside = reference.masked_fill(under, 255)  # pixels under the patch are left out of every mIoU
            clean, after, random_after = (mean_iou_score(p, outside, self.num_classes) for p in (self.clean, adv, rnd))
            flips = float(((adv != self.clean) & ~under).sum() / (~under).sum().clamp_min(1))
            metrics[f"patched_miou@scale={s:g}"] = after
            metrics[f"miou_drop@scale={s:g}"] = clean - after
            metrics[f"success_rate@scale={s:g}"] = _relative_drop(clean, after)
            rows.append(
                [
                    scale_label(s),
                    f"{sides[k]}×{sides[k]}",
                    clean,
                    after,
                    random_after,
                    flips,
                    _relative_drop(clean, after),
                    _relative_drop(clean, random_after),
                ]
            )
        return {
            "metrics": metrics,
            "rows": [r[:6] for r in rows],
            "runs": runs,
            "sides": sides,
            "success": [r[6] for r in rows],
            "series": {"untargeted": ([r[6] for r in rows], [r[7] for r in rows])},
            "labels": {"untargeted": "outside the patch"},
            "columns": [
                "patch area",
                "patch px",
                "clean mIoU outside",
                "patched",
                "random patch",
                "pixels changed outside",
            ],
        }

    def findings(self, scales, scored, score_scale):
        k = scales.index(score_scale)
        _, _, clean, after, random_after, flips = scored["rows"][k]
        return [
            Finding(
                _severity(scored["success"][k]),
                f"a patch covering {scale_label(score_scale)} of the image cuts mIoU outside it from "
                f"{clean:.3f} to {after:.3f} and changes the class of {flips:.0%} of the pixels it does not "
                f"cover (a random patch of that size: mIoU {random_after:.3f})",
                key=True,
            )
        ]

    def gallery(self, adapter, patches, k, n, scored, seed, with_cam) -> Gallery | None:
        """The held-out images whose prediction outside the patch changes most."""
        adv, under = scored["runs"]["untargeted"][k]
        changed = ((adv != self.clean) & ~under).flatten(1).float().mean(1)
        pick = torch.argsort(changed, descending=True, stable=True)[:n].sort().values
        if len(pick) == 0:
            return None
        x, cover = self.replay(patches["untargeted"][k], k, pick)
        with torch.no_grad():
            after = adapter(x).argmax(1)
        titles = [
            ("clean prediction", f"{changed[i]:.0%} of pixels changed", bool(changed[i] > 0)) for i in pick.tolist()
        ]
        cams = (
            cam_pair(adapter, self.pixels(pick), x, mask_targets(self.clean[pick], under[pick])) if with_cam else None
        )
        return Gallery(
            self.pixels(pick).cpu(),
            x.cpu(),
            cover[:, 0].cpu(),
            list(self.clean[pick].cpu()),
            list(after.cpu()),
            titles,
            cams,
        )


class DetectGoal(Goal):
    """Objects (ground truth; for label-free data the clean detections) padded to M slots per image."""

    what = {
        "success": "Share of found objects hidden",
        "area": "box",
        "axis": "share of found objects hidden",
        "cam": "the most confident clean box (its candidate's class score)",
    }

    def __init__(self, adapter, images, reference, clean, labelled):
        super().__init__(adapter, images, reference, clean, labelled)
        dev, m = images.device, max([len(r) for r in reference] + [1])
        self.boxes = torch.zeros(len(images), m, 4, device=dev)
        self.valid = torch.zeros(len(images), m, dtype=torch.bool, device=dev)
        for i, r in enumerate(reference):
            self.boxes[i, : len(r)], self.valid[i, : len(r)] = r[:, 1:5], True
        self.candidates = torch.nonzero(self.valid.any(1)).flatten()  # training needs an object to sit on
        # the largest box sets the tiles' size: read once here, not at every step
        self.largest_area = float(_box_area(self.boxes[self.valid]).max()) if self.valid.any() else 1.0
        self.found_clean = self._found(clean)

    @staticmethod
    def predict_clean(adapter, x, batch_size):
        return [d for s in _chunks(len(x), batch_size) for d in adapter.predict(as_unit_float(x[s]), conf=SHOW_CONF)]

    @staticmethod
    def label_free(clean):
        return [torch.cat([d["labels"][:, None].float(), d["boxes"]], 1) for d in clean]

    def patch_sides(self, scales):
        """The patch's resolution: its side on an object of the median box area."""
        areas = _box_area(self.boxes[self.valid]) if self.valid.any() else torch.ones(1)
        return [max(1, round(math.sqrt(s * float(areas.median())))) for s in scales]

    def place(self, idx, scale, generator, train):
        """One copy per object slot, centred on the object (moved a little while training); absent slots off."""
        boxes, valid = self.boxes[idx], self.valid[idx]
        size = boxes[..., 2:] - boxes[..., :2]
        u = torch.rand(len(idx), boxes.shape[1], 4, generator=generator, device=boxes.device)
        sides = (scale * size[..., 0] * size[..., 1]).clamp_min(1).sqrt()
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        if train:
            sides = sides * (SIDE_JITTER[0] + (SIDE_JITTER[1] - SIDE_JITTER[0]) * u[..., 0])
            centre = centre + (2 * u[..., 2:] - 1) * BOX_JITTER * size
        angle = torch.deg2rad((2 * u[..., 1] - 1) * ROTATION)
        extent = tile_extent(math.sqrt(max(scale * self.largest_area, 1)) * (SIDE_JITTER[1] if train else 1))
        return [Placement(centre[:, j], sides[:, j], angle[:, j], extent, valid[:, j]) for j in range(boxes.shape[1])]

    def loss(self, out, idx, cover, mode):
        """Per image, the mean over its objects of how far their candidates' scores stand above HIDE_CONF."""
        from auditor.models.ultralytics import _decoded

        decoded = _decoded(out)  # R x (4 + classes [+ mask coefficients]) x candidates; boxes cx, cy, w, h
        xywh = decoded[:, :4].detach().transpose(1, 2)
        boxes = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)
        confidence = decoded[:, 4 : 4 + self.num_classes].amax(1)  # YOLOv8's stand-in for objectness
        excess = (torch.logit(confidence, eps=1e-6) - math.log(HIDE_CONF / (1 - HIDE_CONF))).clamp_min(0)
        own = (_pair_iou(self.boxes[idx], boxes) >= MATCH_IOU) & self.valid[idx, :, None]  # R x M x candidates
        per_object = (excess[:, None, :] * own).sum(-1)
        return per_object.sum(1) / self.valid[idx].sum(1).clamp_min(1)

    def outcome(self, adapter, x, cover):
        return adapter.predict(x, conf=SHOW_CONF)

    def _found(self, detections: list[dict]) -> torch.Tensor:
        """N x M: each object still found (a shown box of its class at IoU >= 0.5), for the images in order."""
        found = torch.zeros_like(self.valid)
        for i, hit in enumerate(task_of("detect").found(detections, self.reference)):
            found[i, : len(hit)] = hit
        return found

    def score(self, runs, scales):
        objects = int(self.valid.sum())
        was_found = self.found_clean
        clean_recall = float(was_found.sum()) / objects if objects else None
        metrics = {"clean_recall": clean_recall}
        rows, sides = [], self.patch_sides(scales)
        for k, s in enumerate(scales):
            adv, rnd = self._found(runs["hide"][k]), self._found(runs["random"][k])
            recall = float(adv.sum()) / objects if objects else None
            hidden, random_hidden = _rate(~adv, was_found), _rate(~rnd, was_found)
            metrics[f"patched_recall@scale={s:g}"] = recall
            metrics[f"recall_drop@scale={s:g}"] = None if recall is None else clean_recall - recall
            metrics[f"success_rate@scale={s:g}"] = hidden
            rows.append(
                [
                    scale_label(s),
                    f"~{sides[k]}×{sides[k]}",
                    clean_recall,
                    recall,
                    float(rnd.sum()) / objects if objects else None,
                    hidden,
                    random_hidden,
                ]
            )
        return {
            "metrics": metrics,
            "rows": rows,
            "runs": runs,
            "sides": sides,
            "success": [r[5] for r in rows],
            "series": {"hide": ([r[5] for r in rows], [r[6] for r in rows])},
            "labels": {"hide": "hide objects"},
            "objects": (objects, int(was_found.sum())),
            "columns": [
                "patch area (of each box)",
                "patch px",
                "clean recall",
                "patched recall",
                "random patch recall",
                "found objects hidden",
                "random patch",
            ],
        }

    def findings(self, scales, scored, score_scale):
        _, _, clean, recall, _, hidden, random_hidden = scored["rows"][scales.index(score_scale)]
        objects, found = scored["objects"]
        if hidden is None:
            return [
                Finding(
                    "medium",
                    f"nothing to hide: the detector finds none of the {objects} held-out objects without a patch",
                    key=True,
                )
            ]
        return [
            Finding(
                _severity(hidden),
                f"a patch covering {scale_label(score_scale)} of each object's box hides "
                f"{hidden:.0%} of the {found} held-out objects the detector found (recall "
                f"{clean:.3f} → {recall:.3f}; a random patch of that size hides "
                f"{random_hidden:.0%})",
                key=True,
            )
        ]

    def gallery(self, adapter, patches, k, n, scored, seed, with_cam) -> Gallery | None:
        """The held-out images that lose the most objects."""
        if not self.valid.any():
            return None
        lost = (self.found_clean & ~self._found(scored["runs"]["hide"][k])).sum(1)
        pick = torch.argsort(lost, descending=True, stable=True)[:n].sort().values
        x, cover = self.replay(patches["hide"][k], k, pick)
        with torch.no_grad():
            after = [{key: v.cpu() for key, v in d.items()} for d in adapter.predict(x, conf=SHOW_CONF)]
        before = [{key: v.cpu() for key, v in self.clean[i].items()} for i in pick.tolist()]
        found = self.found_clean.sum(1)
        titles = [
            (
                f"{len(b['boxes'])} boxes",
                f"{len(a['boxes'])} boxes; {int(lost[i])} of {int(found[i])} hidden",
                int(lost[i]) > 0,
            )
            for b, a, i in zip(before, after, pick.tolist())
        ]
        cams = (
            cam_pair(adapter, self.pixels(pick), x, best_box_targets(adapter, self.pixels(pick))) if with_cam else None
        )
        return Gallery(self.pixels(pick).cpu(), x.cpu(), cover[:, 0].cpu(), before, after, titles, cams)


GOALS = {"classify": ClassifyGoal, "segment": SegmentGoal, "detect": DetectGoal}


# ---- Grad-CAM beside the examples (when the gradcam probe is part of the run) -------------------------------


def cam_pair(adapter, clean: torch.Tensor, patched_x: torch.Tensor, targets) -> tuple | None:
    """Grad-CAM of the same target on the clean and the patched images, in one forward and backward.

    `targets` are the Targets for the N examples (row i = image i), or None.
    Models without hookable layers (TorchScript, exported graphs) give None.
    """
    from auditor.cam import cam_maps, upsample

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


def _gather(ctx: Context, idx: torch.Tensor):
    """Images `idx` of the data on the device, in the data's own dtype, and their labels (list for detectors)."""
    data = ctx.data
    x = data.images[idx].to(ctx.device)
    if isinstance(data.labels, list):
        return x, [data.labels[i].to(ctx.device) for i in idx.tolist()]
    return x, data.labels[idx].to(ctx.device).long()


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _join(parts: list):
    """Batches of outcomes joined: tensors, tuples of tensors, or lists of detections."""
    if isinstance(parts[0], list):
        return [d for part in parts for d in part]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def _rate(hits: torch.Tensor, among: torch.Tensor) -> float | None:
    """Share of `hits` among the `among` items; None when there are none."""
    return float(hits[among].double().mean()) if among.any() else None


def _relative_drop(clean: float, after: float) -> float | None:
    if not clean or math.isnan(clean) or math.isnan(after):
        return None
    return min(max(1 - after / clean, 0.0), 1.0)


def _first_lower(text: str) -> str:
    """'Relative mIoU drop' -> 'relative mIoU drop' (str.lower would give 'miou')."""
    return text[:1].lower() + text[1:]


def _severity(success: float | None) -> str:
    if success is None:
        return "info"
    return "high" if success >= HALF else "medium" if success >= 0.2 else "low"


def _seeded_pick(items: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n of the ascending `items`, drawn with the seed, ascending."""
    return items[torch.tensor(seeded_subset(len(items), n, seed), dtype=torch.long, device=items.device)]


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of R x M boxes with R x A boxes (xyxy) -> R x M x A."""
    lo = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    hi = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    return inter / (_box_area(a)[:, :, None] + _box_area(b)[:, None, :] - inter).clamp_min(1e-9)
