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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from auditor.errors import did_you_mean
from auditor.models.base import TASKS
from auditor.probes.actmax.channels import Unit, has_convs, layer_units, reading, spread
from auditor.probes.actmax.parameterisation import DEGREES, SCALES, SHIFT, FourierImage, transform
from auditor.probes.base import Context, Probe
from auditor.results import Finding, ProbeResult

CANVAS = 128  # detectors and segmenters optimise on at most this many pixels a side (Lucid's usual size)
MANY_CLASSES = 100  # from here on, classifiers show TOP_CLASSES classes instead of all
TOP_CLASSES = 16
LAYERS = 3  # layers chosen by default: at about 1/3 and 2/3 of the depth, and the last
LEAK = 0.01  # slope of the channel objective below zero while optimising
# Default steps: 256 on canvases up to 64x64 px, else 96. `audit run --probes actmax` on 2 idle CPU
# cores took 7.9 s for digits-cnn (28 px, 34 images), 38.8 s for shapes-unet and 13.5 s for
# shapes-yolov8n (128 px, 24 images); a step costs about 0.4 s on shapes-unet, which sets the limit.
SMALL_CANVAS, SMALL_STEPS, AUTO_STEPS = 64 * 64, 256, 96


class ActMaxProbe(Probe):
    name = "actmax"
    template = "probes/actmax.html.j2"
    report_order = 50
    description = "activation maximisation: optimised images for classes and hidden channels (Fourier parameterisation)"
    tasks = TASKS
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

    def skip_reason(self, adapter):
        reason = super().skip_reason(adapter)
        if reason is None and adapter.task != "classify" and not has_convs(adapter.net):
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

        metrics: dict[str, float | None] = {}
        details = {
            "canvas": list(canvas),
            "steps": steps,
            "lr": p.lr,
            "batch": len(run["images"]),
            "colour": adapter.channels == 3,
            "shift": SHIFT,
            "scales": list(SCALES),
            "degrees": DEGREES,
            "class_choice": class_choice,
            "classes": [],
            "layers": [],
            "captions": {},
        }
        findings, artifacts = [], []
        if classes:
            self._class_gallery(ctx, run, classes, class_choice, steps, metrics, details, findings, artifacts)
        if targets:
            self._channel_galleries(ctx, run, len(classes), targets, data_max, metrics, details, findings, artifacts)
        elif adapter.task == "classify":
            findings.append(
                Finding(
                    "info",
                    "no hidden layer can be hooked in this model (TorchScript or an exported graph): class images only",
                )
            )
        what = [f"{len(classes)} class logits"] if classes else []
        if targets:
            what.append(f"{sum(len(c) for _, c in targets)} channels of {', '.join(u.name for u, _ in targets)}")
        findings.insert(
            0,
            Finding(
                "info",
                f"optimised {' and '.join(what)} together: one batch of "
                f"{details['batch']} images on a {canvas[0]}×{canvas[1]} canvas, {steps} "
                "Adam steps",
            ),
        )
        return ProbeResult(
            status="ok",
            score=None,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(artifacts),
            details=details,
        )

    def _canvas(self, adapter) -> tuple[int, int]:
        if self.params.size is not None:
            return self.params.size, self.params.size
        h, w = adapter.input_size
        return (h, w) if adapter.task == "classify" else (min(h, CANVAS), min(w, CANVAS))

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
        if self.params.classes and adapter.task != "classify":
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
        if adapter.task != "classify":
            return [], "none"
        if self.params.classes:
            return self._given_classes(adapter), "given"
        names = adapter.class_names
        if len(names) < MANY_CLASSES:
            return list(range(len(names))), "all"
        counts = torch.bincount(predicted, minlength=len(names))
        order = torch.sort(counts, descending=True, stable=True).indices[:TOP_CLASSES]  # ties: lower index first
        return [int(i) for i in order], "most predicted"

    def _class_gallery(self, ctx, run, classes, class_choice, steps, metrics, details, findings, artifacts):
        from auditor.figures import draw_titled_tiles

        names, n = ctx.adapter.class_names, len(classes)
        probs, ids = run["probs"], torch.tensor(classes)
        own = probs[torch.arange(n), ids]
        hits = probs.argmax(1) == ids
        metrics["class_confidence"] = own.mean().item()
        metrics["class_hit_rate"] = hits.double().mean().item()
        details["classes"] = [
            {
                "index": c,
                "name": names[c],
                "probability": own[i].item(),
                "hit": bool(hits[i]),
                "predicted": names[int(probs[i].argmax())],
                "logit_start": run["start"][i].item(),
                "logit_end": run["final"][i].item(),
            }
            for i, c in enumerate(classes)
        ]
        path, rel = ctx.artifact("classes.png")
        draw_titled_tiles(
            run["images"][:n],
            [f"{names[c]}\np={own[i]:.2f}" for i, c in enumerate(classes)],
            path,
            alert=(~hits).tolist(),
        )
        artifacts.append(rel)
        details["captions"][rel] = (
            "One image per class, optimised to raise the class logit; title: the class and "
            "the probability the model gives it (red: classified as another class)"
        )
        missed = [d for d in details["classes"] if not d["hit"]]
        if missed:
            listed = ", ".join(f"{d['name']} (seen as {d['predicted']})" for d in missed[:5])
            findings.append(
                Finding(
                    "medium",
                    f"{len(missed)} of {n} class images are not classified as their class "
                    f"after {steps} steps: {listed}",
                    key=True,
                )
            )
        if class_choice == "most predicted":
            findings.append(
                Finding(
                    "info",
                    f"{len(names)} classes: showing the {n} the model predicts most often on "
                    f"the evaluation data ({', '.join(names[c] for c in classes)}); choose "
                    "others with --set actmax.classes=...",
                )
            )

    def _channel_galleries(self, ctx, run, row, targets, data_max, metrics, details, findings, artifacts):
        from auditor.figures import draw_titled_tiles

        ratios, beats, dead, unreached = [], [], [], []
        for i, (unit, chans) in enumerate(targets):
            k = len(chans)
            got, best = run["final"][row : row + k], data_max[unit.name]
            ratio = [g / b if b > 0 else None for g, b in zip(got.tolist(), best.tolist())]
            ratios += [r for r in ratio if r is not None]
            beats += (got > best).tolist()
            off = got <= 0
            dead += [f"{unit.name}:{c}" for c, d in zip(chans, off & (best <= 0)) if d]
            unreached += [f"{unit.name}:{c}" for c, u in zip(chans, off & (best > 0)) if u]
            details["layers"].append(
                {
                    "name": unit.name,
                    "read_at": unit.hook,
                    "width": unit.shape[0],
                    "grid": list(unit.shape[1:]),
                    "channels": chans,
                    "activation": got.tolist(),
                    "data_max": best.tolist(),
                }
            )
            path, rel = ctx.artifact(f"channels_{i}.png")
            draw_titled_tiles(
                run["images"][row : row + k],
                [f"ch {c}" + (f"\n×{r:.1f}" if r is not None else "") for c, r in zip(chans, ratio)],
                path,
                alert=off.tolist(),
            )
            artifacts.append(rel)
            read = f", read after {unit.hook}" if unit.hook != unit.name else ""
            details["captions"][rel] = (
                f"Layer {unit.name} ({unit.shape[0]} channels, {unit.shape[1]}×{unit.shape[2]} on the canvas{read}): "
                "each image raises one channel's mean activation over all positions; ×: that activation over the "
                "highest any evaluation image gives the channel (red: the channel stays off)"
            )
            row += k
        metrics["channel_gain"] = float(torch.tensor(ratios).median()) if ratios else None
        metrics["channel_beats_data"] = sum(beats) / len(beats)
        metrics["dead_channels"] = float(len(dead))
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
                findings.append(Finding(severity, f"{len(names)} of {len(beats)} channels {text} ({listed})"))


def optimise(ctx: Context, classes: list[int], targets: list, canvas, steps: int, lr: float, bar) -> dict:
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
    return {"images": final_images.cpu(), "start": start.cpu(), "final": final.cpu(), "probs": probs}


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
    adapter = ctx.adapter
    maxes = {u.name: torch.full((len(c),), -math.inf) for u, c in targets}
    predicted = []
    with reading(adapter.net, [u for u, _ in targets]) as acts, torch.no_grad():
        for x, _ in ctx.data.batches(ctx.batch_size, ctx.device):
            out = adapter(x)
            if adapter.task == "classify":
                predicted.append(out.argmax(1).cpu())
            for u, chans in targets:
                v = acts[u.name][:, chans].relu().mean(dim=(2, 3)).float().cpu()
                maxes[u.name] = torch.maximum(maxes[u.name], v.max(0).values)
    return maxes, torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)
