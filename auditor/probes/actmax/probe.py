"""`actmax`: activation maximisation, the images a model finds most typical of a class or a channel.

Feature visualisation by optimisation, as described by Olah, Mordvintsev & Schubert (2017),
"Feature Visualization", Distill, doi:10.23915/distill.00007, and Mordvintsev, Pezzotti,
Schubert & Olah (2018), "Differentiable Image Parameterizations", Distill,
doi:10.23915/distill.00012. Each image is a learnable Fourier spectrum scaled by
1/frequency (so steps favour low frequencies instead of the high-frequency patterns a pixel
parameterisation drifts into); 3-channel images go through ImageNet's colour-correlation
square root, so the optimiser works in decorrelated colour; a sigmoid keeps pixels in
[0, 1]. Every step sees a random translation, scale and rotation of each image
(transformation robustness), and Adam ascends the objective.

Objectives: a classifier's pre-softmax logit, one image per class (or per chosen class for
models with many classes); for every task, a channel of a hidden conv layer: the mean over
all positions of its rectified activation, read after the conv's normalisation layer (see
`layer_units`). All targets of a run are rows of ONE batch: a step is one forward and one
backward, hooks read every layer's activations from that forward, and each row ascends its
own objective.

Metrics (informational, no score): `class_confidence`, the mean softmax probability each
class image gets for its own class; `class_hit_rate`, the share classified as their
class; `channel_gain`, the median over channels of the optimised activation divided by
the highest activation any evaluation image gives the channel (channels no evaluation
image switches on left out); `channel_beats_data`, the share of channels the optimised image
drives harder than every evaluation image; `dead_channels`, how many stay off (zero) even
on the image optimised for them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from auditor.errors import did_you_mean
from auditor.figures import draw_titled_tiles
from auditor.probes.actmax.channels import Unit, has_convs, layer_units, spread
from auditor.probes.actmax.details import ActMaxDetails, ChannelLayer, ClassImage
from auditor.probes.actmax.optimisation import Optimised, data_statistics, optimise
from auditor.probes.actmax.parameterisation import DEGREES, SCALES, SHIFT
from auditor.probes.base import Context, Figures, Probe
from auditor.results import Finding, ProbeResult
from auditor.stats import Estimates, Ratio
from auditor.tasks import TASKS, task_of

CANVAS = 128  # fully convolutional models (Task.fully_convolutional) optimise on at most this many px a side (Lucid)
MANY_CLASSES = 100  # from here on, classifiers show TOP_CLASSES classes instead of all
TOP_CLASSES = 16
LAYERS = 3  # layers chosen by default: at about 1/3 and 2/3 of the depth, and the last
# Default steps: 256 on canvases up to 64x64 px, else 96. `audit run --probes actmax` on 2 idle CPU
# cores took 7.9 s for digits-cnn (28 px, 34 images), 38.8 s for shapes-unet and 13.5 s for
# shapes-yolov8n (128 px, 24 images); a step costs about 0.4 s on shapes-unet, which sets the limit.
SMALL_CANVAS, SMALL_STEPS, AUTO_STEPS = 64 * 64, 256, 96


class ActMaxProbe(Probe):
    name = "actmax"
    template = "probes/actmax.html.j2"
    report_order = 50
    description = "activation maximisation: optimised images for classes and hidden channels (Fourier parameterisation)"
    tasks = tuple(TASKS)
    # class_confidence, class_hit_rate, channel_gain, channel_beats_data: higher is better
    lower_is_better = ("dead_channels",)

    @dataclass
    class Params:
        steps: int | None = None  # None: SMALL_STEPS on canvases up to SMALL_CANVAS pixels, else AUTO_STEPS
        lr: float = 0.05  # Adam, on the spectrum
        classes: tuple[str, ...] = ()  # indices or names; empty: all, or the most predicted for >= 100 classes
        layers: tuple[str, ...] = ()  # module names; empty: 3 conv layers spread over depth
        channels: int = 8  # per layer, evenly spread over the layer's channels
        size: int | None = None  # canvas side in px; None: the input for classifiers, min(input, 128) otherwise

        def __post_init__(self):
            if self.steps is not None and self.steps < 1:
                raise ValueError(f"steps must be at least 1, got {self.steps}")
            if not 0 < self.lr <= 1:
                raise ValueError(f"lr must lie in (0, 1], got {self.lr}")
            if self.channels < 1:
                raise ValueError(f"channels must be at least 1, got {self.channels}")
            if self.size is not None and self.size < 8:
                raise ValueError(f"size must be at least 8 px, got {self.size}")
            for name in ("classes", "layers"):
                if any(not item.strip() for item in getattr(self, name)):
                    raise ValueError(f"{name}: an entry is empty")

    @classmethod
    def view(cls, details) -> ActMaxDetails:
        return ActMaxDetails.from_dict(details)

    def skip_reason(self, adapter):
        reason = super().skip_reason(adapter)
        if reason is None and not task_of(adapter).class_logits and not has_convs(adapter.net):
            return "actmax reads hidden channels through forward hooks, which TorchScript and exported graphs lack"
        return reason

    def check(self, adapter) -> None:
        """Layer and class names, and a canvas the model can take: one forward of one image."""
        self._layers(adapter)
        self._given_classes(adapter)

    def run(self, ctx: Context) -> ProbeResult:
        p, adapter = self.params, ctx.adapter
        net = adapter.net
        was_training = net.training
        net.eval()
        try:
            canvas = self._canvas(adapter)
            targets = [(u, spread(u.shape[0], p.channels)) for u in self._layers(adapter)]
            data_max, predicted = data_statistics(ctx, targets)
            classes, class_choice = self._classes(adapter, predicted)
            steps = p.steps or (SMALL_STEPS if canvas[0] * canvas[1] <= SMALL_CANVAS else AUTO_STEPS)
            bar = ctx.progress(steps, self.name)
            run = optimise(ctx, classes, targets, canvas, steps, p.lr, bar)
            bar.close()
        finally:
            net.train(was_training)

        figures = Figures(ctx)
        details = ActMaxDetails(
            canvas=list(canvas),
            steps=steps,
            lr=p.lr,
            batch=len(run.images),
            colour=adapter.channels == 3,
            shift=SHIFT,
            scales=list(SCALES),
            degrees=DEGREES,
            class_choice=class_choice,
            captions=figures.captions,
        )
        metrics: dict[str, float | None] = {}
        findings = [_summary(classes, targets, details)]
        if classes:
            details.classes, class_scores = class_images(adapter.class_names, run, classes)
            metrics.update(class_scores)
            findings += class_findings(adapter.class_names, details.classes, class_choice, steps)
            draw_class_images(figures, run, details.classes)
        if targets:
            details.layers = channel_layers(run, len(classes), targets, data_max)
            metrics.update(channel_metrics(details.layers))
            findings += channel_findings(details.layers)
            draw_channel_images(figures, run, len(classes), targets, details.layers)
        elif ctx.task.class_logits:
            findings.append(
                Finding(
                    "info",
                    "no hidden layer can be hooked in this model (TorchScript or an exported graph): class images only",
                )
            )
        return ProbeResult(
            status="ok",
            score=None,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(figures.artifacts),
            details=details.to_dict(),
            **target_estimates(details.classes or [], details.layers or []),
        )

    def _canvas(self, adapter) -> tuple[int, int]:
        if self.params.size is not None:
            return self.params.size, self.params.size
        h, w = adapter.input_size
        return (min(h, CANVAS), min(w, CANVAS)) if task_of(adapter).fully_convolutional else (h, w)

    def _layers(self, adapter) -> list[Unit]:
        net = adapter.net
        canvas = self._canvas(adapter)
        units = layer_units(net, torch.full((1, adapter.channels, *canvas), 0.5, device=adapter.mean.device))
        if not self.params.layers:
            pool = [u for u in units.values() if u.kind == "normed"] or [u for u in units.values() if u.kind == "conv"]
            if not pool:
                return []  # nothing hookable (TorchScript, exported graphs): class images only
            picks = sorted({math.ceil(k * len(pool) / LAYERS) - 1 for k in range(1, LAYERS + 1)})
            return [pool[i] for i in picks]
        known = dict(net.named_modules())
        for name in self.params.layers:
            if name not in known:
                convs = [u.name for u in units.values() if u.kind != "other"]
                examples = ", ".join(convs[:: max(1, len(convs) // 6)][:6]) or "none"
                raise ValueError(
                    f"layers: no layer {name!r} in the model{did_you_mean(name, known)}; conv layers include {examples}"
                )
            if name not in units:
                raise ValueError(
                    f"layers: {name!r} gives no N x C x H x W activation on the canvas, so it has no channels to show"
                )
        return [units[name] for name in dict.fromkeys(self.params.layers)]

    def _given_classes(self, adapter) -> list[int]:
        """The class indices of actmax.classes (names or indices), in order, without repeats."""
        if self.params.classes and not task_of(adapter).class_logits:
            raise ValueError(f"classes: class images need a classifier; this model is a {adapter.task} model")
        names, picked = adapter.class_names, []
        for item in self.params.classes:
            if item in names:
                picked.append(names.index(item))
            elif item.isdigit() and int(item) < len(names):
                picked.append(int(item))
            else:
                raise ValueError(
                    f"classes: {item!r} is neither a class name{did_you_mean(item, names)} nor an index "
                    f"below {len(names)}"
                )
        return list(dict.fromkeys(picked))

    def _classes(self, adapter, predicted: torch.Tensor) -> tuple[list[int], str]:
        """The classes to optimise an image for, and how they were chosen (ActMaxDetails.class_choice)."""
        if not task_of(adapter).class_logits:
            return [], "none"
        if self.params.classes:
            return self._given_classes(adapter), "given"
        names = adapter.class_names
        if len(names) < MANY_CLASSES:
            return list(range(len(names))), "all"
        counts = torch.bincount(predicted, minlength=len(names))
        order = torch.sort(counts, descending=True, stable=True).indices[:TOP_CLASSES]  # ties: lower index first
        return [int(i) for i in order], "most predicted"


def _summary(classes: list[int], targets: list, details: ActMaxDetails) -> Finding:
    what = [f"{len(classes)} class logits"] if classes else []
    if targets:
        what.append(f"{sum(len(c) for _, c in targets)} channels of {', '.join(u.name for u, _ in targets)}")
    canvas = details.canvas
    return Finding(
        "info",
        f"optimised {' and '.join(what)} together: one batch of "
        f"{details.batch} images on a {canvas[0]}×{canvas[1]} canvas, {details.steps} "
        "Adam steps",
    )


# ---- class images -------------------------------------------------------------------------------------------


def class_images(names: list[str], run: Optimised, classes: list[int]) -> tuple[list[ClassImage], dict[str, float]]:
    """How the model sees each class's optimised image (rows 0..len(classes) of the batch), and the metrics:
    the mean probability of its own class, the share classified as it."""
    probs, ids = run.probs, torch.tensor(classes)
    own = probs[torch.arange(len(classes)), ids]
    hits = probs.argmax(1) == ids
    metrics = {"class_confidence": own.mean().item(), "class_hit_rate": hits.double().mean().item()}
    images = [
        ClassImage(
            index=c,
            name=names[c],
            probability=own[i].item(),
            hit=bool(hits[i]),
            predicted=names[int(probs[i].argmax())],
            logit_start=run.start[i].item(),
            logit_end=run.final[i].item(),
        )
        for i, c in enumerate(classes)
    ]
    return images, metrics


def class_findings(names: list[str], images: list[ClassImage], class_choice: str, steps: int) -> list[Finding]:
    findings, n = [], len(images)
    missed = [c for c in images if not c.hit]
    if missed:
        listed = ", ".join(f"{c.name} (seen as {c.predicted})" for c in missed[:5])
        findings.append(
            Finding(
                "medium",
                f"{len(missed)} of {n} class images are not classified as their class after {steps} steps: {listed}",
                key=True,
            )
        )
    if class_choice == "most predicted":
        findings.append(
            Finding(
                "info",
                f"{len(names)} classes: showing the {n} the model predicts most often on "
                f"the evaluation data ({', '.join(c.name for c in images)}); choose "
                "others with --set actmax.classes=...",
            )
        )
    return findings


def draw_class_images(figures: Figures, run: Optimised, images: list[ClassImage]) -> None:
    figures.save(
        "classes.png",
        "One image per class, optimised to raise the class logit; title: the class and "
        "the probability the model gives it (red: classified as another class)",
        functools.partial(draw_titled_tiles, alert=[not c.hit for c in images]),
        run.images[: len(images)],
        [f"{c.name}\np={c.probability:.2f}" for c in images],
    )


# ---- channel images -----------------------------------------------------------------------------------------


def channel_layers(run: Optimised, row: int, targets: list, data_max: dict[str, torch.Tensor]) -> list[ChannelLayer]:
    """Each layer's channels: their objective on their optimised image (rows from `row` on) and in the data."""
    layers = []
    for unit, chans in targets:
        got = run.final[row : row + len(chans)]
        layers.append(
            ChannelLayer(
                name=unit.name,
                read_at=unit.hook,
                width=unit.shape[0],
                grid=list(unit.shape[1:]),
                channels=chans,
                activation=got.tolist(),
                data_max=data_max[unit.name].tolist(),
            )
        )
        row += len(chans)
    return layers


def _ratios(layer: ChannelLayer) -> list[float | None]:
    """Each channel's optimised activation over the highest in the data; None where the data never switch it on."""
    return [g / b if b > 0 else None for g, b in zip(layer.activation, layer.data_max)]


def target_estimates(classes: list[ClassImage], layers: list[ChannelLayer]) -> dict:
    """Intervals over the optimised targets (not images: each target is one optimisation), for the class images'
    confidence and hit rate and the share of channels driven past the data; ProbeResult's intervals and paired."""
    out: dict[str, dict] = {"intervals": {}, "paired": {}}
    parts = []
    if classes:
        est = Estimates(len(classes), items=[c.index for c in classes])
        est.add("class_confidence", Ratio.of_values(torch.tensor([c.probability for c in classes])))
        est.add("class_hit_rate", Ratio.of_flags(torch.tensor([c.hit for c in classes])))
        parts.append(est)
    if layers:
        beats = [g > b for layer in layers for g, b in zip(layer.activation, layer.data_max)]
        est = Estimates(len(beats), items=[c for layer in layers for c in layer.channels])
        est.add("channel_beats_data", Ratio.of_flags(torch.tensor(beats)))
        parts.append(est)
    for est in parts:
        for key, value in est.to_dict().items():
            out[key].update(value)
    return out


def channel_metrics(layers: list[ChannelLayer]) -> dict[str, float | None]:
    ratios = [r for layer in layers for r in _ratios(layer) if r is not None]
    beats = [g > b for layer in layers for g, b in zip(layer.activation, layer.data_max)]
    dead = [g <= 0 and b <= 0 for layer in layers for g, b in zip(layer.activation, layer.data_max)]
    return {
        "channel_gain": float(torch.tensor(ratios).median()) if ratios else None,
        "channel_beats_data": sum(beats) / len(beats),
        "dead_channels": float(sum(dead)),
    }


def channel_findings(layers: list[ChannelLayer]) -> list[Finding]:
    pairs = [
        (f"{layer.name}:{c}", g, b)
        for layer in layers
        for c, g, b in zip(layer.channels, layer.activation, layer.data_max)
    ]
    dead = [name for name, g, b in pairs if g <= 0 and b <= 0]
    unreached = [name for name, g, b in pairs if g <= 0 and b > 0]
    findings = []
    for names, text, severity in (
        (dead, "stay off on every evaluation image and on the image optimised for them: dead units", "low"),
        (
            unreached,
            "stay off on the image optimised for them although evaluation "
            "images switch them on: the optimisation found no jitter-robust "
            "input for them",
            "info",
        ),
    ):
        if names:
            listed = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            findings.append(Finding(severity, f"{len(names)} of {len(pairs)} channels {text} ({listed})"))
    return findings


def draw_channel_images(figures: Figures, run: Optimised, row: int, targets: list, layers: list[ChannelLayer]) -> None:
    for i, ((unit, chans), layer) in enumerate(zip(targets, layers)):
        k = len(chans)
        read = f", read after {unit.hook}" if unit.hook != unit.name else ""
        figures.save(
            f"channels_{i}.png",
            f"Layer {unit.name} ({unit.shape[0]} channels, {unit.shape[1]}×{unit.shape[2]} on the canvas{read}): "
            "each image raises one channel's mean activation over all positions; ×: that activation over the "
            "highest any evaluation image gives the channel (red: the channel stays off)",
            functools.partial(draw_titled_tiles, alert=[g <= 0 for g in layer.activation]),
            run.images[row : row + k],
            [f"ch {c}" + (f"\n×{r:.1f}" if r is not None else "") for c, r in zip(chans, _ratios(layer))],
        )
        row += k
