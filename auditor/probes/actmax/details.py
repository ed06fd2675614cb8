"""The actmax probe's details, typed: results.json keeps `asdict` of them, key for key as before these
classes existed; `ActMaxDetails.from_dict` rebuilds them for the report's template."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClassImage:
    """The image optimised for one class, and how the model sees it."""

    index: int
    name: str
    probability: float  # the softmax probability the model gives its class
    hit: bool  # classified as its class
    predicted: str  # the class it is classified as
    logit_start: float  # the class logit at the first step
    logit_end: float  # and on the final image, without jitter


@dataclass
class ChannelLayer:
    """One hidden layer's channels: the images optimised for them against the evaluation data."""

    name: str  # the layer as the user names it
    read_at: str  # the module whose output is read (its normalisation, where it has one)
    width: int  # the layer's channels
    grid: list[int]  # H x W of its output on the canvas
    channels: list[int]  # the channels shown
    activation: list[float]  # each one's objective on its optimised image
    data_max: list[float]  # the highest any evaluation image gives it


@dataclass
class ActMaxDetails:
    canvas: list[int]  # H, W in px
    steps: int
    lr: float
    batch: int  # images optimised together
    colour: bool  # 3 channels, in decorrelated colour
    shift: float  # jitter: translation as a share of the side
    scales: list[float]  # jitter: scale range
    degrees: float  # jitter: rotation range, both ways
    class_choice: str  # none | all | given | most predicted
    classes: list[ClassImage] = field(default_factory=list)
    layers: list[ChannelLayer] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # artifact -> caption

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActMaxDetails:
        return cls(
            **{k: v for k, v in d.items() if k not in ("classes", "layers")},
            classes=[ClassImage(**c) for c in d["classes"]],
            layers=[ChannelLayer(**layer) for layer in d["layers"]],
        )
