"""Classifiers: predictions are class ids, references labels; the score is accuracy."""

from __future__ import annotations

import torch

from auditor.stats import Ratio, wilson
from auditor.targets import Targets, chunks
from auditor.tasks.base import Task

DOMINANT_SHARE = 0.95  # one class predicted for this share of the images or more: (nearly) constant predictions
DOMINANT_MIN_IMAGES = 20  # ... on at least this many images (three photographs of one dog are no sign of collapse)
FLOAT_NOISE = 1e-5  # a top-1 margin below this share of the larger score (about 80 float32 steps) is a tie


class Classify(Task):
    name = "classify"
    metric = "accuracy"

    def predict(self, adapter, x: torch.Tensor) -> torch.Tensor:
        return adapter.predict(x).cpu()

    def score(self, pred, reference, adapter) -> float:
        return (pred == reference).double().mean().item()

    def estimates(self, pred, reference, adapter) -> dict:
        return {self.metric: Ratio.of_flags(pred == reference)}

    def agreement(self, pred, reference) -> torch.Tensor:
        return (pred == reference).double()

    def nothing_to_measure(self, pred, reference, labelled: bool) -> str | None:
        if not labelled or not len(pred) or bool((pred == reference).any()):
            return None
        return (
            f"none of the {len(pred)} images is classified correctly when clean (accuracy 0): there is no correct "
            "prediction for an attack, a shift or a patch to break; check the class order, the labels and the "
            "preprocessing (--mean, --std)"
        )

    def chance_level(self, pred, reference, labelled: bool) -> str | None:
        """Clean accuracy whose 95% interval reaches down to chance: the share of the most common label, what a
        model that always guesses that class scores. Checked on DOMINANT_MIN_IMAGES images or more, and not
        at accuracy 0 (nothing_to_measure says that)."""
        n = len(pred)
        correct = int((pred == reference).sum()) if labelled and n else 0
        if n < DOMINANT_MIN_IMAGES or correct == 0:
            return None
        chance = float(torch.bincount(reference.long()).max()) / n
        low, high = wilson(correct, n)
        if low > chance:
            return None
        return (
            f"clean accuracy {correct / n:.1%} (95%: {low:.1%}-{high:.1%}) is not above chance, {chance:.1%} "
            f"(the share of the most common label among the {n} images)"
        )

    @torch.no_grad()
    def constant_predictions(self, adapter, data, batch_size: int, device) -> str | None:
        """One class for DOMINANT_SHARE of the images (where the labels are not that lopsided themselves), or
        a median top-1 margin at float noise."""
        if adapter.num_classes < 2:
            return None
        tops = [adapter(x).float().topk(2, 1) for x, _ in data.batches(batch_size, device)]
        if not tops:
            return None
        top = torch.cat([t.values.cpu() for t in tops])
        pred = torch.cat([t.indices[:, 0].cpu() for t in tops])
        n = len(top)
        margin = float(((top[:, 0] - top[:, 1]) / top.abs().amax(1).clamp_min(1e-30)).median())
        if margin <= FLOAT_NOISE:
            return (
                f"the top two class scores tie up to float rounding on most of the {n} images (median margin "
                f"{margin:.1e} of the top score)"
            )
        counts = torch.bincount(pred, minlength=adapter.num_classes)
        share = float(counts.max()) / n
        lopsided = data.labelled and float(torch.bincount(data.labels.long()).max()) / n >= DOMINANT_SHARE
        if n < DOMINANT_MIN_IMAGES or share < DOMINANT_SHARE or lopsided:
            return None
        name = adapter.class_names[int(counts.argmax())]
        return f"class {name!r} is predicted for {share:.0%} of the {n} images"

    # ---- augment ----------------------------------------------------------------------------------------

    def imagenet_classes(self, num_classes: int) -> bool:
        return num_classes == 1000

    # ---- attacks ----------------------------------------------------------------------------------------

    attack_stops_when_wrong = True
    attack_norms = ("linf", "l2")
    attack_steps = 100  # AutoAttack's; 50 left digits-robust one image weaker than APGD-T alone at ε = 0.15
    attack_queries = 100
    attack_masked_queries = 5000  # AutoAttack's Square budget
    attack_min_eps_images = 64
    attack_bisect_rounds = 4
    attack_check_images = 16
    attack_per_class = True
    attack_gallery_at_flip = True
    attack_gallery = "classes"
    # ---- gradcam ----------------------------------------------------------------------------------------
    class_logits = True
    label_kind = "class"
    explain_images = 32
    explain_faithful_rows = 64
    explain_row = "an image and a class: the predicted one, and the true one where they differ"
    explain_nothing = "classes"
    explain_score = "the class score"
    explain_gallery = (
        "{method} per predicted class: a column per class, titles the prediction (red where it is wrong, with the "
        "true class)"
    )

    @torch.no_grad()
    def explain_targets(self, adapter, x: torch.Tensor, labels, cap: int, batch_size: int) -> Targets:
        """Each image's predicted class, and right after it the true class where the model got it wrong."""
        dev = x.device
        pred = torch.cat([adapter(x[s]).argmax(1) for s in chunks(len(x), batch_size)])
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

    # ---- actmax -----------------------------------------------------------------------------------------
    fully_convolutional = False
