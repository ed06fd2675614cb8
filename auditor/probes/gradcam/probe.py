"""`gradcam`: where the model looks, and whether the maps deserve belief.

Maps (auditor.cam): CAM where the network ends in global average pooling + linear,
Grad-CAM and Grad-CAM++ for every model, one forward and one backward per batch of
"rows". A row is one thing to explain: a classifier's predicted class (and the true
class where they differ), a detector's box (target: that box's class score at its
anchor), a segmenter's class (target: the sum of that class's logits over its predicted
mask; the background class 0 is left out).

Trust: deletion and insertion AUCs (Petsiuk et al. 2018) of each map beside a random map
and an edge map, and ROAD's (Rong et al. 2022: removed pixels imputed) for the judged map; cascading weight randomisation (Adebayo et al. 2018), whose mean rank
correlation is `randomization_similarity`; with ground truth, `energy_in_object` and the
pointing game. A map no better than chance, or one that survives randomisation, is
flagged (`untrustworthy` = 1), because it does not show what the model uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from auditor.cam import METHODS
from auditor.errors import did_you_mean
from auditor.probes.base import Context, Probe
from auditor.probes.gradcam.details import (
    Border,
    GradCamDetails,
    GradCamView,
    Localisation,
    NothingExplained,
    Shortcuts,
)
from auditor.probes.gradcam.estimates import gradcam_estimates
from auditor.probes.gradcam.faithfulness import (
    BASELINES,
    CHANCE_MARGIN,
    Faithfulness,
    faithfulness,
    faithfulness_findings,
)
from auditor.probes.gradcam.figures import LABELS, draw_all
from auditor.probes.gradcam.input_maps import INPUT_METHODS
from auditor.probes.gradcam.localisation import (
    border_attention,
    border_findings,
    localisation_findings,
    localise,
    row_objects,
)
from auditor.probes.gradcam.maps import Maps, explain, explain_from_input
from auditor.probes.gradcam.road import road_findings, road_jobs
from auditor.probes.gradcam.sanity import Cascade, cascade_stages, learned_layers, randomisation, sanity_findings
from auditor.probes.gradcam.shortcut import location_shortcuts, shortcut_findings
from auditor.probes.gradcam.source import SOURCES, Source, choose_source
from auditor.results import Finding, ProbeResult
from auditor.targets import chunks, round_robin
from auditor.tasks import TASKS, Task, task_of


@dataclass
class Where:
    """Where the judged maps fall: against the ground truth, the image's border, and each class's own place."""

    found: Localisation | None
    border: Border
    shortcuts: Shortcuts

    @classmethod
    def of(cls, maps: torch.Tensor, t, names, objects) -> Where:
        """objects: each row's ground-truth object and whether it has one (localisation.row_objects), or None."""
        return cls(
            found=localise(maps, objects, tuple(maps.shape[-2:])),
            border=border_attention(maps, t.cls, names),
            shortcuts=location_shortcuts(maps, t.cls, names, *(objects or (None, None))),
        )


SAMPLE_POOL = 4  # classifiers: the sample is drawn from this many times as many images, spread over predicted classes


class GradCamProbe(Probe):
    name = "gradcam"
    template = "probes/gradcam.html.j2"
    report_order = 40
    description = (
        "CAM, Grad-CAM, Grad-CAM++ maps; deletion/insertion and ROAD vs random and edge maps; weight randomisation "
        "check; location shortcuts per class"
    )
    tasks = tuple(TASKS)
    # insertion_auc, road_lerf_auc, energy_in_object, pointing_game: higher is better. The random and edge maps
    # are baselines the model is measured against, not explanations, so their AUCs have no direction.
    lower_is_better = (
        "deletion_auc",
        "road_morf_auc",
        "randomization_similarity",
        "untrustworthy",
        "border_energy",
        "shortcut_classes",
    )
    no_direction = tuple(
        f"{curve}_auc@{baseline}"
        for baseline in BASELINES
        for curve in ("deletion", "insertion", "road_morf", "road_lerf")
    )

    @dataclass
    class Params:
        layer: tuple[str, ...] = ()  # module names (as in net.named_modules()); empty: found automatically
        methods: tuple[str, ...] = METHODS  # CAM only where the net ends in GAP + linear
        images: int = 0  # sampled images; 0: the task's explain_images (32 for classifiers, 8 otherwise)
        max_targets: int = 48  # rows explained at most (boxes and classes add up)
        steps: int = 12  # deletion / insertion steps
        faithful_rows: int = 0  # rows scored by deletion / insertion; 0: the task's (64 for classifiers, 8 otherwise)
        stages: int = 4  # cascading randomisation stages (top layer first, all layers last)
        gallery: int = 3  # classifiers: images per class in the gallery
        # auto: a layer where one can be tapped, else the input; layer: a layer or an error; input: the input
        source: str = "auto"
        # maps from the input: occlusion (needs no gradient; ~170 forwards a row) | smoothgrad (16 forward+backward
        # a row; on digits-cnn it misses a planted corner mark) | ig (Integrated Gradients: its maps survive the
        # randomisation check on digits-cnn, as Adebayo et al. found for gradient x input)
        input_method: str = "occlusion"
        input_samples: int = 16  # IG's interpolation steps, SmoothGrad's noisy copies

        def __post_init__(self):
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown or not self.methods:
                raise ValueError(
                    f"methods: unknown {', '.join(unknown) or '(none given)'}"
                    f"{did_you_mean(unknown[0], METHODS) if unknown else ''}; known: {', '.join(METHODS)}"
                )
            for name in ("images", "faithful_rows"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be 0 (automatic) or more, got {getattr(self, name)}")
            for name, value, known in (
                ("source", self.source, SOURCES),
                ("input_method", self.input_method, INPUT_METHODS),
            ):
                if value not in known:
                    raise ValueError(
                        f"{name}: unknown {value!r}{did_you_mean(value, known)}; known: {', '.join(known)}"
                    )
            if self.source == "input" and self.layer:
                raise ValueError("layer: maps from the input (source=input) read no layer; leave layer unset")
            for name in ("max_targets", "steps", "stages", "gallery", "input_samples"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
            empty = [n for n in self.layer if not n.strip()]
            if empty:
                raise ValueError("layer: a module name is empty")

    @classmethod
    def view(cls, details) -> GradCamView | None:
        return GradCamView.of(details)

    def skip_reason(self, adapter) -> str | None:
        if adapter.task not in self.tasks:
            return super().skip_reason(adapter)
        return task_of(adapter).explain_unsupported(adapter)

    def check(self, adapter) -> None:
        self._source(adapter)

    def run(self, ctx: Context) -> ProbeResult:
        p, adapter, task = self.params, ctx.adapter, ctx.task
        source = self._source(adapter)
        names = source.names
        x, labels, picked = self._sample(ctx)
        t = task.explain_targets(adapter, x, labels, p.max_targets, ctx.batch_size)
        if len(t) == 0:
            text = f"nothing to explain: no {task.explain_nothing} predicted on the {len(x)} sampled images"
            return ProbeResult(
                status="ok", score=None, findings=(Finding("medium", text),), details=NothingExplained(names).to_dict()
            )
        faithful = min(len(t), p.faithful_rows or task.explain_faithful_rows)
        learned = learned_layers(source.adapter, task)
        stages = cascade_stages(len(learned), p.stages) if learned else []
        bar = ctx.progress(self._work(len(t), len(stages), source), self.name)
        maps = self._maps(source, source.adapter, task, x, t, p.methods, ctx.batch_size, bar.update)
        faith = faithfulness(adapter, x, t, maps, faithful, p.steps, ctx.generator(), ctx.batch_size, bar.update)
        primary = maps.primary

        def maps_of(twin):
            return self._maps(source, twin, task, x, t, (primary,), ctx.batch_size, bar.update).coarse[primary]

        if learned:
            cascade = randomisation(source.adapter, learned, maps_of, maps.coarse[primary], stages, ctx.seed)
        else:  # nothing to re-initialise: the check cannot run, and says so
            cascade = Cascade([], [], None)
        objects = row_objects(task, t, labels, tuple(x.shape[-2:]), x.device)
        where = Where.of(maps.full[primary], t, adapter.class_names, objects)
        bar.close()

        metrics = self._metrics(faith, primary, cascade, where)
        findings, untrusted = self._findings(task, faith, cascade, where, primary, faithful)
        findings.append(self._source_finding(task, source, maps, len(t)))
        metrics["untrustworthy"] = float(untrusted)
        estimates = gradcam_estimates(faith, primary, maps.full[primary], objects, t.image, picked)
        estimates.items = {k: e for k, e in estimates.items.items() if k in metrics}  # the metrics reported
        figures = draw_all(ctx, x, t, maps, faith, cascade, picked, labels, p.gallery, where.shortcuts)
        details = GradCamDetails(
            layers=names,
            methods=maps.methods,
            primary=primary,
            rows=len(t),
            images=len(x),
            faithful_rows=faithful,
            steps=p.steps,
            aucs=faith.aucs,
            road=faith.road_aucs,
            stages=cascade.stages,
            cam=maps.cam,
            captions=figures.captions,
            row_kind=task.explain_row,
            localisation=where.found,
            border=where.border,
            source=source.why,
            shortcuts=where.shortcuts,
        )
        return ProbeResult(
            status="ok",
            score=None,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(figures.artifacts),
            details=details.to_dict(),
            **estimates.to_dict(),
        )

    # ---- what to explain ------------------------------------------------------------------------------

    def _source(self, adapter) -> Source:
        """Where the maps come from (source.py); chosen once per model, at the check before any probe runs."""
        if getattr(self, "_chosen", None) is None or self._chosen[0] is not adapter:
            p = self.params
            self._chosen = (adapter, choose_source(adapter, p.source, p.layer))
        return self._chosen[1]

    def _maps(self, source: Source, adapter, task: Task, x, t, methods, batch_size: int, progress) -> Maps:
        """The maps of every row on `adapter` (the model's hookable form, or a randomised copy of it)."""
        if source.from_input:
            p = self.params
            return explain_from_input(adapter, x, t, p.input_method, p.input_samples, batch_size, progress)
        return explain(adapter, task, source.modules(adapter), x, t, methods, batch_size, progress)

    def _sample(self, ctx):
        """A seeded sample of the data: images on the device, their labels, their indices in the set.

        Classifiers: drawn from a seeded pool of SAMPLE_POOL times as many images, one per predicted class
        in turn, so that each class gets maps enough for the per-class checks (a location shortcut needs 3
        of a class's maps; a plain draw of 32 digits gave one class 2 and missed a planted one)."""
        data = ctx.data
        n = min(len(data), self.params.images or ctx.task.explain_images)
        g = torch.Generator().manual_seed(ctx.seed)
        order = torch.randperm(len(data), generator=g)
        if ctx.task.class_logits and len(data) > n:
            pool = order[: SAMPLE_POOL * n]  # in the seeded order: each class's first images come first
            predicted = torch.cat(
                [
                    ctx.adapter.predict(data.images_at(pool[s], ctx.device)).cpu()
                    for s in chunks(len(pool), ctx.batch_size)
                ]
            )
            order = pool[torch.tensor(round_robin(predicted.tolist()))]
        picked = order[:n].sort().values
        xs, labels = [], []
        for i in picked.tolist():
            xi, yi = data.batch(slice(i, i + 1), ctx.device)
            xs.append(xi)
            labels.append(yi)
        if not data.labelled:
            labels = None
        elif isinstance(labels[0], list):
            labels = [y[0] for y in labels]
        else:
            labels = torch.cat(labels)
        return torch.cat(xs), labels, picked

    # ---- results --------------------------------------------------------------------------------------

    def _work(self, rows: int, stages: int, source: Source) -> int:
        """The progress bar's total: rows explained, scored curve steps, randomised rows."""
        p = self.params
        shown = 1 if source.from_input else len(p.methods)
        curves = 2 * (p.steps + 1) * (shown + len(BASELINES)) + road_jobs(1 + len(BASELINES), p.steps)
        return rows + curves + stages * rows

    @staticmethod
    def _metrics(faith: Faithfulness, primary: str, cascade: Cascade, where: Where) -> dict:
        aucs, road = faith.aucs, faith.road_aucs
        metrics: dict[str, float | None] = {
            "deletion_auc": aucs[primary].deletion,
            "insertion_auc": aucs[primary].insertion,
        }
        for name, a in aucs.items():
            metrics[f"deletion_auc@{name}"], metrics[f"insertion_auc@{name}"] = a.deletion, a.insertion
        metrics["road_morf_auc"], metrics["road_lerf_auc"] = road[primary].morf, road[primary].lerf
        for name in BASELINES:
            metrics[f"road_morf_auc@{name}"], metrics[f"road_lerf_auc@{name}"] = road[name].morf, road[name].lerf
        metrics["randomization_similarity"] = cascade.mean
        if where.found is not None:
            metrics["energy_in_object"] = where.found.energy_in_object
            metrics["pointing_game"] = where.found.pointing_game
        metrics["border_energy"] = where.border.mean
        metrics["shortcut_classes"] = float(len(where.shortcuts.flagged))
        return metrics

    @staticmethod
    def _findings(
        task: Task, faith: Faithfulness, cascade: Cascade, where: Where, primary: str, faithful: int
    ) -> tuple[list[Finding], bool]:
        """The findings, faithfulness first, and whether the maps are untrustworthy (chance or randomisation)."""
        findings, faith_untrusted = faithfulness_findings(faith.aucs, primary, task.explain_score, faithful)
        sanity, sanity_untrusted = sanity_findings(cascade, primary, task.randomised_unit)
        road = road_findings(faith.road_aucs, primary, task.explain_score, faithful, CHANCE_MARGIN)
        findings[1:1] = road + shortcut_findings(where.shortcuts, primary) + border_findings(where.border, primary)
        findings += sanity + localisation_findings(where.found)
        return findings, faith_untrusted or sanity_untrusted

    @staticmethod
    def _source_finding(task: Task, source: Source, maps: Maps, rows: int) -> Finding:
        if source.from_input:
            return Finding("info", f"{source.why}; {LABELS[maps.primary]} (captum); {rows} rows explained")
        if maps.cam:
            cam = "CAM from the GAP + linear head"
        elif task.class_logits:
            cam = "no CAM: the network does not end in GAP + linear"
        else:
            cam = "CAM is for classifiers"
        layers = "layers" if len(source.layers) > 1 else "layer"
        return Finding("info", f"{source.why.replace('layer', layers, 1)}; {rows} rows explained; {cam}")
