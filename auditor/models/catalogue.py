"""The seed's systems that come by download: what `audit zoo list` shows beside the zoo.

`--model` takes any torchvision or ultralytics name; these are the ones the project's seed
teaches with, listed so that a user finds `audit run --model resnet50` without reading the code.
Sizes and published metrics come from torchvision's Weights enums; ultralytics keeps its table in
its documentation, not its package, so its row is cited from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision.models

from auditor.models.torchvision import cached_weights_path, torchvision_task

TORCHVISION = (
    "vgg16",
    "resnet50",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "lraspp_mobilenet_v3_large",
)
# docs.ultralytics.com/models/yolov8 (detection, COCO val2017 at 640 px): yolov8n.pt is 6.2 MB.
ULTRALYTICS = {"yolov8n": ("detect", 6.2, "COCO val2017 mAP50-95 37.3", "YOLOv8n, COCO, 80 classes")}


@dataclass(frozen=True)
class Downloadable:
    name: str
    task: str
    source: str  # torchvision | ultralytics
    size_mb: float
    metric: str  # as published, with its data set
    cached: bool  # weights already on this machine: the model runs offline
    description: str


def _torchvision_row(name: str) -> Downloadable:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    dataset, figures = next(iter(weights.meta["_metrics"].items()))
    metric = f"{dataset} " + ", ".join(f"{k} {v}" for k, v in figures.items())
    return Downloadable(
        name=name,
        task=torchvision_task(name),
        source="torchvision",
        size_mb=float(weights.meta["_file_size"]),
        metric=metric,
        cached=cached_weights_path(weights).is_file(),
        description=f"{weights}, {len(weights.meta['categories'])} classes",
    )


def downloadables() -> list[Downloadable]:
    from auditor.models.ultralytics import local_weights

    rows = [_torchvision_row(name) for name in TORCHVISION]
    for name, (task, size, metric, description) in ULTRALYTICS.items():
        cached = local_weights(f"{name}.pt") is not None
        rows.append(Downloadable(name, task, "ultralytics", size, metric, cached, description))
    return rows
