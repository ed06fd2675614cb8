"""What the clean predictions leave to measure, checked once per run before the probes.

Two ways an audit can measure nothing while every probe runs:

- the reference holds nothing: a detector that finds no object on the clean images (label-free, its clean boxes
  are the reference), a segmenter that predicts only background, a classifier with no correct clean image. An
  attack, a shift or a patch then has nothing to break, and a rate over nothing is no rate: the probes that
  depend on it report their figures as null, never 0, with one finding that says why (`unmeasured`).
- the predictions are (nearly) constant: one class for most images, or top-1 margins at float noise (untrained or
  collapsed models). Label-free, every rate is then the share of images whose prediction moves, and which way a
  near-tie falls decides it: two runs of a random-weight resnet50 gave patch scores of 0.03 and 0.44. Those rates
  are marked as not meaningful; with labels they still measure accuracy, and the run's key findings say why the
  model deserves a look.

And one way its relative figures mislead: a classifier whose clean accuracy is no better than guessing the most
common label. What augment keeps of the clean accuracy, and what a patch or an attack takes from the images it
got right, is then measured against luck: such a model keeps "all" its accuracy under every corruption. The
figures stay (they are what happened), and the run's key findings say why they are not robustness.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditor.results import Finding
from auditor.tasks import predict_all


@dataclass(frozen=True)
class Degeneracy:
    empty: str | None = None  # why the reference holds nothing to measure, or None
    constant: str | None = None  # why the clean predictions are (nearly) constant, or None
    chance: str | None = None  # why the clean score is no better than guessing, or None
    label_free: bool = False

    @property
    def rates_not_meaningful(self) -> str | None:
        """Why label-free rates (shares of images whose prediction an attack, a shift or a patch moves) mean nothing
        here, or None: they hinge on ties when the predictions are constant."""
        if self.constant is None or not self.label_free:
            return None
        return f"label-free rates hinge on near-ties here: {self.constant}"

    def findings(self) -> list[Finding]:
        """The run's own findings (results.json's top-level `findings`, first among the key findings)."""
        out = []
        if self.empty is not None:
            out.append(Finding("high", f"nothing to measure: {self.empty}", key=True))
        if self.constant is not None:
            consequence = (
                "label-free rates (attacks, augment, patch) hinge on which way near-ties fall and are marked as "
                "not meaningful"
                if self.label_free
                else "check the weights and the preprocessing (--mean, --std, the class order) before reading further"
            )
            out.append(Finding("high", f"(nearly) constant predictions: {self.constant}; {consequence}", key=True))
        if self.chance is not None:
            out.append(
                Finding(
                    "high",
                    f"accuracy at chance level: {self.chance}; what the probes measure relative to it (the accuracy "
                    "augment keeps, the images a patch or an attack turns) compares with guessing, not robustness",
                    key=True,
                )
            )
        return out


def inspect(adapter, data, task, batch_size: int, device) -> Degeneracy:
    """The run's Degeneracy: one pass of clean predictions over the data (and, for classifiers, their margins)."""
    clean = predict_all(adapter, data, task, batch_size, device)
    reference = task.reference(data, clean)
    constant = task.constant_predictions(adapter, data, batch_size, device)
    return Degeneracy(
        empty=task.nothing_to_measure(clean, reference, data.labelled),
        constant=constant,
        chance=None if constant else task.chance_level(clean, reference, data.labelled),  # one says it
        label_free=not data.labelled,
    )
