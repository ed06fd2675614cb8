"""`shapes-yolov8n`: YOLOv8n trained with ultralytics on the synthetic shapes world.

The recipe builds the network from ultralytics' own `yolov8n.yaml` (no pretrained weights,
nothing downloaded), trains it with ultralytics' trainer, and ships the weights as a plain
state dict: loading it needs no unpickling of code, and the architecture is rebuilt from
the same YAML.
"""

from __future__ import annotations

import csv as csvlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from auditor.data import load_data
from auditor.files import sha256_of
from auditor.metrics import detection_map
from auditor.models.base import MAP_CONF, ModelFacts, Preprocess
from auditor.models.ultralytics import DetectorAdapter, detection_model, quiet_ultralytics
from zoo import shapes
from zoo.registry import ZooEntry, register

SIZE = 160
ARCH = "yolov8n.yaml"
TEST_IMAGES = 200
RECIPE = {
    "arch": ARCH,
    "train_images": 400,
    "val_images": 100,
    "epochs": 75,
    "imgsz": SIZE,
    "batch": 16,
    "optimizer": "ultralytics default (auto)",
    "augment": "ultralytics defaults (mosaic, HSV, flips)",
    "seed": 0,
}


def build() -> torch.nn.Module:
    return detection_model(ARCH, nc=len(shapes.CLASSES))


def test_set_path() -> Path:
    return shapes.cache_dir() / f"shapes-det-test-{TEST_IMAGES}-v1"


def load_test_set(seed: int = 0) -> Path:
    """The held-out set as an ultralytics data set (data.yaml, split `test`), written on first use."""
    del seed
    return shapes.write_detection_set(test_set_path(), {"test": TEST_IMAGES}, SIZE) / "data.yaml"


def train(
    out_path: Path, seed: int = 0, progress: Callable[[int], Any] | None = None, budget: float = 1.0
) -> dict[str, Any]:
    """ultralytics' trainer on generated data; `budget` scales images and epochs (tests use a small one)."""
    quiet_ultralytics()
    from ultralytics import YOLO  # optional and heavy: only the recipe trains with it

    r = RECIPE
    n_train, n_val = max(8, int(r["train_images"] * budget)), max(4, int(r["val_images"] * budget))
    epochs = max(1, int(r["epochs"] * budget))
    with tempfile.TemporaryDirectory() as tmp:
        data = shapes.write_detection_set(Path(tmp) / "data", {"train": n_train, "val": n_val}, SIZE)
        model = YOLO(ARCH, task="detect")
        start = time.perf_counter()
        model.train(
            data=str(data / "data.yaml"),
            epochs=epochs,
            imgsz=SIZE,
            batch=r["batch"],
            workers=0,
            device=0 if torch.cuda.is_available() else "cpu",
            seed=seed,
            deterministic=True,
            project=str(Path(tmp) / "runs"),
            name="train",
            exist_ok=True,
            plots=False,
            verbose=False,
            amp=False,
            pretrained=False,
            patience=epochs,
            val=True,
        )
        seconds = time.perf_counter() - start
        results_csv = Path(model.trainer.save_dir) / "results.csv"
        losses = _train_losses(results_csv)
        best = Path(model.trainer.best)
        trained = YOLO(str(best)) if best.is_file() else model  # the epoch ultralytics' validation liked best
        net = build()
        net.load_state_dict(trained.model.float().state_dict())
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out_path)
    scores = held_out_map(net, n_images=TEST_IMAGES if budget >= 1 else max(8, int(TEST_IMAGES * budget)))
    return {
        "path": str(out_path),
        "sha256": sha256_of(out_path),
        "map50": round(scores["map50"], 4),
        "map50_95": round(scores["map50_95"], 4),
        "train_seconds": round(seconds, 1),
        "epochs": epochs,
        "losses": losses,
    }


def _train_losses(csv: Path) -> list[float]:
    """Per-epoch training loss (box + cls + dfl) from ultralytics' results.csv."""
    if not csv.is_file():
        return []
    with open(csv, newline="") as f:
        rows = list(csvlib.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k.strip().startswith("train/")]
    return [round(sum(float(row[k]) for k in keys), 4) for row in rows]


def held_out_map(net: torch.nn.Module, n_images: int = TEST_IMAGES) -> dict[str, float]:
    """mAP50 and mAP50-95 of a trained net on the held-out scenes, through the audit's own data path."""
    adapter = DetectorAdapter(
        net.eval(),
        facts=ModelFacts(name="shapes-yolov8n", source="zoo"),
        class_names=list(shapes.CLASSES),
        input_size=(SIZE, SIZE),
        channels=3,
        mean=(0.0,),
        std=(1.0,),
        preprocess=Preprocess(resize=(SIZE, SIZE)),
        epsilons=(),
    )
    data = load_data(adapter, str(load_test_set()), limit=n_images, seed=0)
    preds = []
    with torch.no_grad():
        for x, _ in data.batches(32):
            preds += adapter.predict(x, conf=MAP_CONF)
    return detection_map(preds, data.labels)


ENTRY = register(
    ZooEntry(
        name="shapes-yolov8n",
        task="detect",
        description="YOLOv8n (ultralytics) on the synthetic shapes world, 160x160 RGB, 3 classes",
        build=build,
        checkpoint="shapes-yolov8n.pt",
        sha256="757115832ce3bd86e638438cea94e3c147a8b1dc9cf1eb7801033e9852d52182",
        input_size=(SIZE, SIZE),
        channels=3,
        mean=(0.0, 0.0, 0.0),  # ultralytics models take [0, 1] pixels
        std=(1.0, 1.0, 1.0),
        categories=shapes.CLASSES,
        eval_set="shapes-det-test",
        load_eval_set=load_test_set,
        metrics={"map50": 0.9139, "map50_95": 0.7388},
        epsilons=("1/255", "2/255", "4/255", "8/255"),
        train=train,
        recipe=RECIPE,
        # Measured on the default audit (idle, 2 cores): 96 images with the standard ensemble took 165 s and 2.05 GiB,
        # attacks 69 s and augment 41 s of it. Square broke no image APGD had left, at any ε (it still runs on every
        # image when a masking check fails). So: APGD alone, 64 images in batches of 32, one patch per scale.
        eval_limit=64,
        audit={"batch_size": 32, "probes": {"attacks": {"ensemble": "fast"}, "patch": {"restarts": 1}}},
    )
)
