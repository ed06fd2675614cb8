"""Bad input gets one clear line (exit 2) or is left out and named, for all three tasks; never a traceback."""

from __future__ import annotations

import pytest

from tests.conftest import read_results
from zoo import shapes

MODELS = """
import torch
class Out(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 10, 3)
        self.make = make
    def forward(self, x):
        return self.make(self.conv(x))
def flat():
    return Out(lambda y: y.mean(dim=(1, 2, 3)))  # N, not N x classes
def infinite():
    return Out(lambda y: y.mean(dim=(2, 3)) / 0.0)
"""


@pytest.mark.parametrize("name, says", [("flat", "must return N x classes"), ("infinite", "NaN or infinite")])
def test_models_with_wrong_or_infinite_outputs(audit, tmp_path, digits_flat, python_module, name, says):
    python_module("badmodels", MODELS)
    r = audit(
        "run", "--model", f"badmodels:{name}", "--input-size", "28", "--data", digits_flat, "--out", tmp_path / "out"
    )
    assert r.code == 2 and says in r.err and "Traceback" not in r.err, r
    assert not (tmp_path / "out" / "results.json").exists()


def test_malformed_toml(audit, tmp_path):
    bad = tmp_path / "audit.toml"
    bad.write_text('model = "digits-cnn\nlimit = [')
    r = audit("run", "--config", bad, "--out", tmp_path / "out")
    assert r.code == 2 and "audit.toml" in r.err and "Traceback" not in r.err, r
    out = tmp_path / "out"
    assert audit("run", "--probes", "filters", "--limit", "4", "--out", out).code == 0
    rules = tmp_path / "gates.toml"
    rules.write_text("rules = attacks.score >= 0.5")
    r = audit("gate", out / "results.json", "--rules", rules)
    assert r.code == 2 and "gates.toml" in r.err and "Traceback" not in r.err, r


def test_segmentation_pairs_with_an_unreadable_image_or_mask_are_left_out(audit, tmp_path, monkeypatch):
    # As in a process that imported ultralytics before (another test, or a user's script): its wrapper
    # around PIL.Image.open answers an unidentifiable file with a HEIF plugin install and an import.
    from PIL import Image
    from ultralytics.utils import patches

    monkeypatch.setenv("YOLO_AUTOINSTALL", "False")
    monkeypatch.setattr(Image, "open", patches.image_open)
    root = shapes.write_segmentation_set(tmp_path / "seg", "test", 6, size=64)
    images, masks = sorted((root / "images").iterdir()), sorted((root / "masks").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:40])  # truncated image
    masks[1].write_bytes(b"")  # empty mask
    out = tmp_path / "out"
    r = audit("run", "--model", "shapes-unet", "--data", root, "--probes", "filters", "--out", out)
    assert r.code == 0, r
    facts = read_results(out)["data"]
    assert facts["n"] == 4 and facts["skipped"] == 2
    assert images[0].name in r.err and masks[1].name in r.err


def test_detection_images_that_cannot_be_read_are_left_out(audit, tmp_path):
    root = shapes.write_detection_set(tmp_path / "det", {"test": 5}, size=160)
    images = sorted((root / "images" / "test").iterdir())
    images[2].write_text("not an image")
    out = tmp_path / "out"
    r = audit("run", "--model", "shapes-yolov8n", "--data", root / "data.yaml", "--probes", "filters", "--out", out)
    assert r.code == 0, r
    facts = read_results(out)["data"]
    assert facts["skipped"] == 1 and images[2].name in facts["skipped_files"][0]


def test_mask_class_ids_beyond_the_model_are_one_line(audit, tmp_path):
    import numpy as np
    from PIL import Image

    root = shapes.write_segmentation_set(tmp_path / "seg", "test", 3, size=64)
    mask = sorted((root / "masks").iterdir())[0]
    values = np.array(Image.open(mask))
    values[:4, :4] = 7
    Image.fromarray(values).save(mask)
    r = audit("run", "--model", "shapes-unet", "--data", root, "--out", tmp_path / "out")
    assert r.code == 2 and "class id(s) 7" in r.err and "4 classes" in r.err, r


def test_box_class_ids_beyond_the_model_are_one_line(audit, tmp_path):
    root = shapes.write_detection_set(tmp_path / "det", {"test": 3}, size=160)
    label = sorted((root / "labels" / "test").glob("*.txt"))[0]
    label.write_text(label.read_text() + "9 0.5 0.5 0.2 0.2\n")
    flat = tmp_path / "flat"  # images/ + labels/ without the YAML: ids are the model's own
    (flat / "images").mkdir(parents=True)
    (flat / "labels").mkdir()
    for f in (root / "images" / "test").iterdir():
        (flat / "images" / f.name).write_bytes(f.read_bytes())
    for f in (root / "labels" / "test").iterdir():
        (flat / "labels" / f.name).write_text(f.read_text())
    r = audit("run", "--model", "shapes-yolov8n", "--data", flat, "--out", tmp_path / "out")
    assert r.code == 2 and "class id(s) 9" in r.err and "3 classes" in r.err, r
