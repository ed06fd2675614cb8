"""`gradcam`: where the model looks, and whether the maps deserve belief.

Maps (auditor.cam): CAM where the network ends in global average pooling + linear,
Grad-CAM and Grad-CAM++ for every model, one forward and one backward per batch of
"rows". A row is one thing to explain: a classifier's predicted class (and the true
class where they differ), a detector's box (target: that box's class score at its
anchor), a segmenter's class (target: the sum of that class's logits over its predicted
mask; the background class 0 is left out).

Trust: deletion and insertion AUCs (Petsiuk et al. 2018) of each map beside a random map
and an edge map; cascading weight randomisation (Adebayo et al. 2018), whose mean rank
correlation is `randomization_similarity`; with ground truth, `energy_in_object` and the
pointing game. A map no better than chance, or one that survives randomisation, is
flagged (`untrustworthy` = 1), because it does not show what the model uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from auditor.cam import METHODS, cam_maps, class_activation_maps, gap_linear_head, upsample
from auditor.errors import did_you_mean
from auditor.models.base import BOX_TARGETS, SHOW_CONF, TASKS
from auditor.probes.base import Context, Figures, Probe
from auditor.probes.gradcam import figures as cam_figures
from auditor.probes.gradcam.faithfulness import auc, deletion_insertion, random_maps, sobel_maps
from auditor.probes.gradcam.figures import LABELS as METHOD_LABELS
from auditor.probes.gradcam.localisation import box_masks, energy_in_object, pointing_hits
from auditor.probes.gradcam.sanity import cascade_stages, parametrised_layers, randomise, rank_correlation
from auditor.results import Finding, ProbeResult
from auditor.targets import Targets, target_scores

SIMILAR = 0.5  # mean rank correlation at or above which randomised maps count as unchanged
CHANCE_MARGIN = 0.02  # an AUC within this of the random map's is no better than chance
# Where the model looks: the outer BORDER share of each side (10%: 36% of the area). A class whose maps
# put more than BORDER_FLAG of their mass there looks at the frame or background rather than the object,
# a shortcut (watermarks, padding, photographer's framing) that robustness numbers do not show.
BORDER, BORDER_FLAG, BORDER_MIN_ROWS = 0.10, 0.5, 3
BASELINES = ("random", "edges")
ROW_KIND = {
    "classify": "an image and a class: the predicted one, and the true one where they differ",
    "detect": "one detected box",
    "segment": "one class predicted in an image (background left out)",
}


class GradCamProbe(Probe):
    name = "gradcam"
    template = "probes/gradcam.html.j2"
    report_order = 40
    description = (
        "CAM, Grad-CAM, Grad-CAM++ maps; deletion/insertion vs random and edge maps; weight randomisation check"
    )
    tasks = TASKS
    # insertion_auc, energy_in_object, pointing_game: higher is better. The random and edge maps are
    # baselines the model is measured against, not explanations, so their AUCs have no direction.
    lower_is_better = ("deletion_auc", "randomization_similarity", "untrustworthy", "border_energy")
    no_direction = ("deletion_auc@random", "insertion_auc@random", "deletion_auc@edges", "insertion_auc@edges")

    @dataclass
    class Params:
        layer: tuple[str, ...] = ()  # module names (as in net.named_modules()); empty: found automatically
        methods: tuple[str, ...] = METHODS  # CAM only where the net ends in GAP + linear
        images: int = 0  # sampled images; 0: 32 for classifiers, 8 for detectors and segmenters
        max_targets: int = 48  # rows explained at most (boxes and classes add up)
        steps: int = 12  # deletion / insertion steps
        faithful_rows: int = 0  # rows scored by deletion / insertion; 0: 64 for classifiers, 8 otherwise
        stages: int = 4  # cascading randomisation stages (top layer first, all layers last)
        gallery: int = 3  # classifiers: images per class in the gallery

        def __post_init__(self):
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown or not self.methods:
                raise ValueError(
                    f"methods: unknown {', '.join(unknown) or '(none given)'}"
                    f"{did_you_mean(unknown[0], METHODS) if unknown else ''}; known: {', '.join(METHODS)}"
                )
            for name in ("images", "faithful_rows"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be 0 (automatic) or more")
            for name in ("max_targets", "steps", "stages"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be at least 1")

    def skip_reason(self, adapter) -> str | None:
        if isinstance(adapter.net, torch.jit.ScriptModule):
            return "TorchScript modules take no hooks, and Grad-CAM reads a layer through them (audit the eager model)"
        if adapter.task == "detect" and not adapter.supports(BOX_TARGETS):
            return "per-box maps need a detector whose boxes map to head outputs (ultralytics); this one has none"
        if not self.params.layer and adapter.task in self.tasks:
            try:
                _ = adapter.cam_layers  # finding the layer is the check
            except ValueError as exc:  # an exported graph keeps no modules to hook
                return f"no layer to explain: {exc}"
        return super().skip_reason(adapter)

    def check(self, adapter) -> None:
        self._layers(adapter)

    def run(self, ctx: Context) -> ProbeResult:
        p = self.params
        adapter, task = ctx.adapter, ctx.adapter.task
        layers = self._layers(adapter)
        modules = [m for _, m in layers]
        x, labels, picked = self._sample(ctx)
        t = self._targets(adapter, x, labels, p.max_targets, ctx.batch_size)
        if len(t) == 0:
            return ProbeResult(
                status="ok",
                score=None,
                findings=(
                    Finding(
                        "medium",
                        f"nothing to explain: no {'boxes at confidence ' + str(SHOW_CONF) if task == 'detect' else 'classes'}"
                        f" predicted on the {len(x)} sampled images",
                    ),
                ),
                details={"layers": [n for n, _ in layers]},
            )
        faithful = min(len(t), p.faithful_rows or (64 if task == "classify" else 8))
        stages = cascade_stages(len(self._learned_layers(adapter)), p.stages)
        bar = ctx.progress(
            len(t) + 2 * (p.steps + 1) * (len(p.methods) + len(BASELINES)) + len(stages) * len(t), self.name
        )

        head = None
        if "cam" in p.methods and task == "classify" and len(layers) == 1:  # CAM reads the GAP's input
            head = gap_linear_head(adapter.net, modules[0], adapter.example_input(2), adapter)
        methods = [m for m in p.methods if m != "cam" or head is not None]
        # The gradient methods always run: the sanity check needs one even where CAM is all that is shown.
        gradient = [m for m in methods if m != "cam"] or ["gradcam"]
        coarse = self._maps(adapter, modules, x, t, gradient, ctx.batch_size, bar)
        if head is not None:
            coarse["cam"] = torch.cat(
                [
                    class_activation_maps(head, modules[0], x[t.image[s]], t.cls[s], adapter)
                    for s in _chunks(len(t), ctx.batch_size)
                ]
            )
        primary = "gradcam" if "gradcam" in gradient else gradient[0]  # checked by randomisation
        size = tuple(x.shape[-2:])
        maps = {m: upsample(coarse[m], size) for m in methods}  # the order asked for
        maps.setdefault(primary, upsample(coarse[primary], size))

        # Faithfulness: the first rows, each map and the two baselines through deletion and insertion.
        g = ctx.generator()
        rows = torch.arange(faithful, device=x.device)
        x_rows = x[t.image[rows]]
        scored = {m: v[rows] for m, v in maps.items()}
        scored["random"] = random_maps(faithful, tuple(coarse[primary].shape[-2:]), size, g).to(x.device)
        scored["edges"] = sobel_maps(x_rows)
        sub = t.take(rows)
        curves = deletion_insertion(
            lambda b, r: target_scores(adapter, b, sub.take(r), probability=True),
            x_rows,
            scored,
            p.steps,
            g,
            ctx.batch_size,
            bar.update,
        )
        aucs = {m: {mode: auc(c).mean().item() for mode, c in modes.items()} for m, modes in curves.items()}

        similarity = self._randomisation(ctx, adapter, modules, layers, x, t, coarse[primary], primary, stages, bar)
        localisation = self._localisation(adapter, maps[primary], t, labels, size)
        border = border_attention(maps[primary], t.cls, adapter.class_names)
        bar.close()

        metrics = self._metrics(aucs, primary, similarity, localisation)
        findings, untrusted = self._findings(
            aucs, primary, similarity, localisation, adapter, layers, head, t, faithful
        )
        metrics["untrustworthy"] = float(untrusted)
        metrics["border_energy"] = border["mean"]
        findings[1:1] = border_findings(border, primary)
        artifacts, captions = self._figures(ctx, x, t, maps, scored, curves, aucs, similarity, primary, picked, labels)
        details = {
            "layers": [n for n, _ in layers],
            "methods": methods,
            "primary": primary,
            "rows": len(t),
            "images": len(x),
            "faithful_rows": faithful,
            "steps": p.steps,
            "aucs": aucs,
            "stages": [
                {"layers": s["layers"], "top": s["top"], "similarity": s["similarity"]} for s in similarity["stages"]
            ],
            "cam": head is not None,
            "captions": captions,
            "row_kind": ROW_KIND[task],
            "localisation": {k: v for k, v in localisation.items() if k != "per_row"},
            "border": border,
        }
        return ProbeResult(
            status="ok",
            score=None,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(artifacts),
            details=details,
        )

    # ---- what to explain ------------------------------------------------------------------------------

    def _layers(self, adapter):
        if self.params.layer:
            try:
                adapter.set_cam_layers(list(self.params.layer))
            except KeyError as exc:
                names = [n for n, _ in adapter.net.named_modules() if n]
                raise ValueError(
                    f"layer: the model has no module {exc.args[0]}"
                    f"{did_you_mean(exc.args[0], names)}; e.g. {', '.join(names[-3:])}"
                ) from None
        return adapter.cam_layers

    def _sample(self, ctx):
        """A seeded sample of the data: images on the device, their labels, their indices in the set."""
        data = ctx.data
        n = min(len(data), self.params.images or (32 if ctx.adapter.task == "classify" else 8))
        g = torch.Generator().manual_seed(ctx.seed)
        picked = torch.randperm(len(data), generator=g)[:n].sort().values
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

    @torch.no_grad()
    def _targets(self, adapter, x, labels, cap: int, batch_size: int) -> Targets:
        task, dev = adapter.task, x.device
        if task == "classify":
            pred = torch.cat([adapter(x[s]).argmax(1) for s in _chunks(len(x), batch_size)])
            image, cls, role = list(range(len(x))), pred.tolist(), ["predicted"] * len(x)
            if labels is not None:  # the true class too, where the model got it wrong
                wrong = torch.nonzero(labels != pred).flatten().tolist()
                image += wrong
                cls += labels[wrong].tolist()
                role += ["true"] * len(wrong)
            order = sorted(range(len(image)), key=lambda i: (image[i], role[i] != "predicted"))[:cap]
            return Targets(
                image=torch.tensor([image[i] for i in order], device=dev),
                cls=torch.tensor([cls[i] for i in order], device=dev),
                role=[role[i] for i in order],
            )
        if task == "segment":
            pred = torch.cat([adapter(x[s]).argmax(1) for s in _chunks(len(x), batch_size)])
            image, cls = [], []
            for i in range(len(x)):
                present = torch.unique(pred[i]).tolist()
                for c in present:
                    if c != 0 and int((pred[i] == c).sum()) >= 16:  # 0 is the background; specks are not objects
                        image.append(i)
                        cls.append(c)
            order = _round_robin(image)[:cap]
            image_t = torch.tensor([image[i] for i in order], device=dev, dtype=torch.long)
            cls_t = torch.tensor([cls[i] for i in order], device=dev, dtype=torch.long)
            return Targets(
                image=image_t, cls=cls_t, role=["mask"] * len(order), mask=pred[image_t] == cls_t[:, None, None]
            )
        found = [d for s in _chunks(len(x), batch_size) for d in adapter.detect_with_anchors(adapter(x[s]))]
        image = [i for i, (d, _) in enumerate(found) for _ in range(len(d["labels"]))]
        order = _round_robin(image)[:cap]
        cls = torch.cat([d["labels"] for d, _ in found]) if image else torch.zeros(0, dtype=torch.long, device=dev)
        anchors = torch.cat([a for _, a in found]) if image else torch.zeros(0, dtype=torch.long, device=dev)
        boxes = torch.cat([d["boxes"] for d, _ in found]) if image else torch.zeros(0, 4, device=dev)
        idx = torch.tensor(order, dtype=torch.long, device=dev)
        return Targets(
            image=torch.tensor([image[i] for i in order], dtype=torch.long, device=dev),
            cls=cls[idx],
            role=["box"] * len(order),
            anchor=anchors[idx],
            box=boxes[idx],
        )

    def _maps(self, adapter, modules, x, t, methods, batch_size, bar) -> dict[str, torch.Tensor]:
        """Gradient maps for every row: one forward and one backward per batch of rows."""
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
        if not methods:
            return {}
        for s in _chunks(len(t), batch_size):
            sub = t.take(s)
            out = cam_maps(lambda b, sub=sub: target_scores(adapter, b, sub), modules, x[sub.image], methods)
            for m in methods:
                parts[m].append(out[m])
            bar.update(s.stop - s.start)
        return {m: torch.cat(v) for m, v in parts.items()}

    # ---- sanity check ---------------------------------------------------------------------------------

    @staticmethod
    def _learned_layers(adapter) -> list[list[tuple[str, torch.nn.Module]]]:
        """Learned layers in the order they run, grouped into the units the cascade randomises.

        Single layers, except for ultralytics detectors: their head's last layer in running order
        serves one pyramid level only, so the cascade goes block by block (model.22, model.21, ...).
        """
        layers = parametrised_layers(adapter.net, adapter.normalize(adapter.example_input(2)), adapter.net)
        # Fixed tensors (YOLO's DFL projection) are part of the decoding, not learned: left alone.
        layers = [(n, m) for n, m in layers if any(p.requires_grad for p in m.parameters(recurse=False))]
        groups: dict[str, list] = {}
        for name, module in layers:
            key = ".".join(name.split(".")[:2]) if adapter.task == "detect" else name
            groups.setdefault(key, []).append((name, module))
        return list(groups.values())

    def _randomisation(self, ctx, adapter, modules, layers, x, t, original, method, stages, bar):
        """Adebayo et al.'s cascade: randomise the top k learned layers, recompute, compare ranks."""
        learned = self._learned_layers(adapter)
        names = [n for n, _ in layers]
        results = []
        for k in stages:
            twin = copy.deepcopy(adapter)
            twin_modules = dict(twin.net.named_modules())
            top = [layer for group in learned[-k:] for layer in group]
            for j, (name, _) in enumerate(top):
                randomise(twin_modules[name], ctx.seed * 7919 + j)
            twin_layers = [twin_modules[n] for n in names]
            maps = self._maps(twin, twin_layers, x, t, [method], ctx.batch_size, bar)[method]
            rho = rank_correlation(original, maps)
            finite = rho[~torch.isnan(rho)]
            results.append(
                {
                    "top": k,
                    "layers": learned[-k][0][0] if k < len(learned) else "all",
                    "similarity": float(finite.mean()) if len(finite) else 0.0,
                    "maps": maps,
                }
            )
            del twin
        mean = float(np.mean([r["similarity"] for r in results]))
        return {"stages": results, "mean": mean}

    # ---- localisation ---------------------------------------------------------------------------------

    def _localisation(self, adapter, maps, t, labels, size) -> dict:
        """Share of the map inside the ground-truth object and the pointing game, where objects are known."""
        if labels is None or adapter.task == "classify":
            return {}
        objects = torch.zeros(len(t), *size, dtype=torch.bool, device=maps.device)
        known = torch.zeros(len(t), dtype=torch.bool, device=maps.device)
        for r in range(len(t)):
            i, c = int(t.image[r]), int(t.cls[r])
            if adapter.task == "segment":
                obj = labels[i] == c
            else:  # the ground-truth box of the same class that the detected box overlaps most (IoU >= 0.5)
                from torchvision.ops import box_iou

                gt = labels[i].to(maps.device)
                gt = gt[gt[:, 0].long() == c]
                if len(gt) == 0:
                    continue
                iou = box_iou(t.box[r : r + 1].float(), gt[:, 1:5].float())[0]
                if iou.max() < 0.5:
                    continue
                obj = box_masks(gt[iou.argmax(), 1:5].view(1, 4).float(), size)[0]
            if obj.any():
                objects[r], known[r] = obj, True
        if not known.any():
            return {}
        tolerance = round(15 * min(size) / 224)  # Zhang et al.'s 15 px at 224 px
        energy = energy_in_object(maps[known], objects[known])
        hits = pointing_hits(maps[known], objects[known], tolerance)
        area = objects[known].flatten(1).float().mean(1)
        return {
            "energy_in_object": float(energy.nanmean()),
            "pointing_game": float(hits.float().mean()),
            "object_area": float(area.mean()),
            "objects": int(known.sum()),
            "tolerance_px": tolerance,
        }

    # ---- results --------------------------------------------------------------------------------------

    @staticmethod
    def _metrics(aucs, primary, similarity, localisation) -> dict[str, float | None]:
        metrics: dict[str, float | None] = {
            "deletion_auc": aucs[primary]["deletion"],
            "insertion_auc": aucs[primary]["insertion"],
        }
        for name, modes in aucs.items():
            for mode, value in modes.items():
                metrics[f"{mode}_auc@{name}"] = value
        metrics["randomization_similarity"] = similarity["mean"]
        for key in ("energy_in_object", "pointing_game"):
            if key in localisation:
                metrics[key] = localisation[key]
        return metrics

    def _findings(self, aucs, primary, similarity, localisation, adapter, layers, head, t, faithful):
        label = METHOD_LABELS
        findings, untrusted = [], False
        mine, rand, edges = aucs[primary], aucs["random"], aucs["edges"]
        ins_gain, del_gain = mine["insertion"] - rand["insertion"], rand["deletion"] - mine["deletion"]
        what = {
            "classify": "the class score",
            "segment": "the class's mean probability over its mask",
            "detect": "the box's class score",
        }[adapter.task]
        if ins_gain < CHANCE_MARGIN and del_gain < CHANCE_MARGIN:
            untrusted = True
            findings.append(
                Finding(
                    "high",
                    f"{label[primary]} maps are no better than a random map at finding what "
                    f"the model uses: insertion AUC {mine['insertion']:.3f} vs random "
                    f"{rand['insertion']:.3f}, deletion AUC {mine['deletion']:.3f} vs random "
                    f"{rand['deletion']:.3f} ({what}, {faithful} rows)",
                    key=True,
                )
            )
        else:
            findings.append(
                Finding(
                    "info",
                    f"{label[primary]} beats a random map: revealing its top pixels first "
                    f"restores {what} faster (insertion AUC {mine['insertion']:.3f} vs "
                    f"{rand['insertion']:.3f}), removing them destroys it faster (deletion AUC "
                    f"{mine['deletion']:.3f} vs {rand['deletion']:.3f})",
                    key=True,
                )
            )
            if edges["insertion"] >= mine["insertion"] and edges["deletion"] <= mine["deletion"]:
                findings.append(
                    Finding(
                        "medium",
                        f"an edge map (Sobel) explains the model as well as {label[primary]} "
                        f"(insertion {edges['insertion']:.3f} vs {mine['insertion']:.3f}, "
                        f"deletion {edges['deletion']:.3f} vs {mine['deletion']:.3f}): the "
                        "maps may show image structure more than the model's reasons",
                        key=True,
                    )
                )
        sim = similarity["mean"]
        first = similarity["stages"][0]
        if sim >= SIMILAR:
            untrusted = True
            findings.append(
                Finding(
                    "high",
                    f"{label[primary]} maps barely change when the weights are randomised "
                    f"(mean rank correlation {sim:.2f} over {len(similarity['stages'])} stages): "
                    "they show the input, not what the model learned (Adebayo et al. 2018)",
                    key=True,
                )
            )
        else:
            findings.append(
                Finding(
                    "info",
                    f"sanity check passed: randomising the top {'block' if adapter.task == 'detect' else 'layer'} alone brings the rank "
                    f"correlation with the original maps to {first['similarity']:.2f}, all "
                    f"stages average {sim:.2f} (maps depend on the learned weights)",
                )
            )
        if "energy_in_object" in localisation:
            findings.append(
                Finding(
                    "info" if localisation["energy_in_object"] >= 0.5 else "medium",
                    f"{localisation['energy_in_object']:.0%} of the map's mass lies inside the ground-truth object "
                    f"(objects cover {localisation['object_area']:.0%} of the image on average); the peak lands on the "
                    f"object for {localisation['pointing_game']:.0%} of {localisation['objects']} objects (pointing game, "
                    f"{localisation['tolerance_px']} px tolerance)",
                    key=True,
                )
            )
        layer_names = ", ".join(n for n, _ in layers)
        findings.append(
            Finding(
                "info",
                f"maps from layer{'s' if len(layers) > 1 else ''} {layer_names}; {len(t)} rows "
                f"explained; "
                + (
                    "CAM from the GAP + linear head"
                    if head is not None
                    else "no CAM: the network does not end in GAP + linear"
                    if adapter.task == "classify"
                    else "CAM is for classifiers"
                ),
            )
        )
        return findings, untrusted

    def _figures(self, ctx, x, t, maps, scored, curves, aucs, similarity, primary, picked, labels):
        adapter = ctx.adapter
        figures = Figures(ctx)
        save = figures.save

        indices = picked.tolist()
        show = _round_robin(t.image.tolist())[:4]
        save(
            "methods.png",
            "Each method's map for the first rows (image number of the set on the left); the raw "
            "peak is printed, since every map is scaled to its own maximum",
            cam_figures.draw_methods,
            adapter,
            x,
            t.take(show),
            {m: v[show] for m, v in maps.items()},
            [indices[int(i)] for i in t.image[show]],
        )
        save(
            "gallery.png",
            _gallery_caption(adapter.task, primary),
            cam_figures.draw_gallery,
            adapter,
            x,
            t,
            maps[primary],
            labels,
            indices,
            self.params.gallery,
        )
        save(
            "faithfulness.png",
            "Deletion (left, lower is better) and insertion (right, higher is better): the "
            "model's score as pixels are removed (set to black) or revealed (on a blurred copy) in each map's "
            "order; mean over rows, AUC in the legend",
            cam_figures.draw_curves,
            curves,
            aucs,
        )
        save(
            "randomisation.png",
            "Cascading randomisation: the map of one row as the top layers are re-initialised "
            "(left to right); a trustworthy map falls apart",
            cam_figures.draw_randomisation,
            adapter,
            x,
            t,
            maps[primary],
            similarity,
        )
        return figures.artifacts, figures.captions


def border_attention(maps: torch.Tensor, classes: torch.Tensor, names) -> dict:
    """Share of each map's mass in the image's outer band, overall and per explained class (worst first)."""
    h, w = maps.shape[-2:]
    bh, bw = max(1, round(BORDER * h)), max(1, round(BORDER * w))
    frame = torch.ones(h, w, dtype=torch.bool, device=maps.device)
    frame[bh : h - bh, bw : w - bw] = False
    share = energy_in_object(maps, frame.expand_as(maps))
    rows = []
    for c in classes.unique().tolist():
        mine = share[(classes == c) & ~share.isnan()]
        if len(mine):
            rows.append(
                {
                    "class": str(names[c]) if c < len(names) else str(c),
                    "rows": len(mine),
                    "border_energy": float(mine.mean()),
                }
            )
    rows.sort(key=lambda r: -r["border_energy"])
    return {
        "band": BORDER,
        "area": float(frame.float().mean()),
        "mean": float(share.nanmean()) if len(share) else None,
        "classes": rows,
    }


def border_findings(border: dict, method: str) -> list[Finding]:
    label = METHOD_LABELS.get(method, method)
    band = f"the outer {border['band']:.0%} of each side, {border['area']:.0%} of the area"
    flagged = [r for r in border["classes"] if r["border_energy"] > BORDER_FLAG and r["rows"] >= BORDER_MIN_ROWS]
    if flagged:
        listed = "; ".join(f"'{r['class']}' {r['border_energy']:.0%} ({r['rows']} maps)" for r in flagged[:4])
        return [
            Finding(
                "medium",
                f"the model attends to the image border for {len(flagged)} class"
                f"{'es' if len(flagged) > 1 else ''}: over half of the {label} mass lies in {band}: "
                f"{listed}. Check for frames, padding or background cues",
                key=True,
            )
        ]
    if border["mean"] is None:
        return []
    worst = border["classes"][0] if border["classes"] else None
    most = f"; most: '{worst['class']}' {worst['border_energy']:.0%}" if worst else ""
    return [
        Finding(
            "info",
            f"the maps stay on the image's interior: {border['mean']:.0%} of the {label} mass lies in {band}{most}",
        )
    ]


def _gallery_caption(task: str, method: str) -> str:
    name = METHOD_LABELS[method]
    return {
        "classify": f"{name} per predicted class: a column per class, titles the prediction (red where it is "
        "wrong, with the true class)",
        "segment": f"{name} per class present: the map of the class's logits over its predicted mask (outlined)",
        "detect": f"{name} per detected box: the map of the box's class score (box drawn)",
    }[task]


def _chunks(n: int, size: int):
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _round_robin(image: list[int]) -> list[int]:
    """Row positions ordered so that each image gives one row before any gives a second."""
    seen: dict[int, int] = {}
    keyed = []
    for pos, i in enumerate(image):
        keyed.append((seen.get(i, 0), pos))
        seen[i] = seen.get(i, 0) + 1
    return [pos for _, pos in sorted(keyed)]
