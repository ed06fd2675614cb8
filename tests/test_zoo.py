"""The zoo's digits-cnn: the shipped checkpoint is what the registry says, and the recipe reproduces it."""

from __future__ import annotations

import pytest
import torch

from auditor.files import sha256_of
from tests.test_degenerate import scan
from zoo import get_entry


def test_registry_entry_matches_checkpoint():
    e = get_entry("digits-cnn")
    assert e.checkpoint_path.stat().st_size < 1_000_000
    assert sha256_of(e.checkpoint_path) == e.sha256
    assert e.metrics["accuracy"] >= 0.97


def test_shipped_checkpoint_reaches_the_registered_accuracy():
    from auditor.models import ModelSpec, load_model

    e = get_entry("digits-cnn")
    model = load_model(ModelSpec(model="digits-cnn")).eval()
    images, labels = e.load_eval_set(0)
    assert len(labels) == 450
    with torch.no_grad():
        acc = (model.predict(images) == labels).double().mean().item()
    assert acc == pytest.approx(e.metrics["accuracy"], abs=1e-4)


@pytest.mark.slow
def test_recipe_reproduces_accuracy(audit, tmp_path):
    """`audit zoo train digits-cnn` from scratch: within 0.01 of the registry (about 30 s on 2 cores)."""
    out = tmp_path / "digits.pt"
    r = audit("zoo", "train", "digits-cnn", "--out", out)
    assert r.code == 0, r
    acc = float(next(line.split(": ")[1] for line in r.out.splitlines() if line.startswith("accuracy:")))
    assert abs(acc - get_entry("digits-cnn").metrics["accuracy"]) <= 0.01
    # and the file it wrote is a loadable, hash-printed checkpoint users can pass with --weights
    r = audit("run", "--weights", out, "--limit", "8", "--probes", "filters", "--out", tmp_path / "o")
    assert r.code == 0, r


@pytest.mark.parametrize("name", ["digits-cnn", "shapes-unet", "shapes-yolov8n"])
def test_every_shipped_checkpoint_matches_its_hash(name):
    e = get_entry(name)
    assert e.available, f"{name}: checkpoint missing or its sha256 differs from the registry"
    assert e.checkpoint_path.stat().st_size < 20_000_000


def test_shapes_unet_reaches_its_registered_miou():
    from auditor.data import load_data
    from auditor.metrics import mean_iou_score
    from auditor.models import ModelSpec, load_model

    e = get_entry("shapes-unet")
    assert e.metrics["miou"] >= 0.85
    model = load_model(ModelSpec(model="shapes-unet")).eval()
    data = load_data(model, None, limit=200, seed=0)  # the whole held-out set, not the audit's default subset
    assert len(data) == 200 and data.labelled
    with torch.no_grad():
        pred = torch.cat([model.predict(x) for x, _ in data.batches(32)])
    assert mean_iou_score(pred, data.labels.long(), 4) == pytest.approx(e.metrics["miou"], abs=2e-3)


def test_shapes_yolo_reaches_its_registered_map50():
    from zoo.shapes_yolo import held_out_map

    e = get_entry("shapes-yolov8n")
    assert e.metrics["map50"] >= 0.9
    model = e.build()
    model.load_state_dict(torch.load(e.checkpoint_path, weights_only=True))
    assert held_out_map(model.eval())["map50"] == pytest.approx(e.metrics["map50"], abs=2e-3)


# Every probe once, on few optimisation steps (each probe's own tests check what more steps buy). The steps were the
# time of this run: on shapes-unet, actmax 45, gradcam 24 and patch 14 of its 101 CPU-seconds (one thread) before.
FEW_STEPS = [
    "--set",
    "attacks.steps=2",
    "--set",
    "attacks.eps=4/255,8/255",
    "--set",
    "actmax.steps=4",
    "--set",
    "patch.steps=2",
    "--set",
    "gradcam.images=2",
    "--set",
    "gradcam.steps=3",
    "--set",
    "gradcam.stages=2",
]


@pytest.mark.slow
@pytest.mark.parametrize("name, task", [("shapes-unet", "segment"), ("shapes-yolov8n", "detect")])
def test_zoo_models_audit_offline_with_every_probe(audit, tmp_path, name, task):
    out = tmp_path / "out"
    r = audit("run", "--model", name, "--offline", "--limit", "4", "--out", out, *FEW_STEPS)
    assert r.code == 0, r
    import json

    res = json.loads((out / "results.json").read_text())
    assert res["model"]["task"] == task
    assert all(p["status"] == "ok" for p in res["probes"].values())
    assert res["probes"]["attacks"]["score"] is not None
    scan(res)  # no two findings of a probe contradict each other on an ordinary run either
