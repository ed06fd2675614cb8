"""The segmentation path: images/ + masks/ data, the segmenter adapter, attacks measured in mIoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.metrics import mean_iou_score
from tests.conftest import ATTACK_CHECKS, read_results
from zoo import shapes

SEG_FAST = [
    "--set",
    "attacks.steps=2",
    "--set",
    "attacks.eps=2/255,8/255",
    "--set",
    "attacks.gallery=2",
    "--set",
    "attacks.min_eps_images=4",
    "--set",
    "attacks.bisect=1",
    "--set",
    "attacks.check_images=2",
    "--set",
    "patch.steps=2",
    "--set",
    "actmax.steps=4",  # as in test_detection: the probe's own tests check what more steps buy
]


def test_generator_is_deterministic_and_labels_agree():
    a, b = shapes.render(123), shapes.render(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, shapes.render(124).image)
    for (x0, y0, x1, y1), cls in zip(a.boxes.astype(int), a.classes):
        inside = a.mask[y0:y1, x0:x1]
        assert (inside == cls + 1).any()  # every box frames visible pixels of its class
    assert set(np.unique(a.mask)) <= {0, 1, 2, 3, shapes.IGNORE}


def test_splits_do_not_overlap():
    assert shapes.scene_seed("train", 99_999) < shapes.scene_seed("val", 0) < shapes.scene_seed("test", 0)


def test_written_sets_use_the_layouts_users_bring(tmp_path):
    seg = shapes.write_segmentation_set(tmp_path / "seg", "test", 3)
    assert sorted(p.name for p in (seg / "images").iterdir()) == sorted(p.name for p in (seg / "masks").iterdir())
    det = shapes.write_detection_set(tmp_path / "det", {"train": 2, "val": 2})
    assert (det / "data.yaml").read_text().startswith(f"path: {det.resolve()}")
    label = (det / "labels" / "val" / "val_0000.txt").read_text().split()
    assert len(label) % 5 == 0 and all(0 <= float(v) <= 1 for v in label[1:5])


def test_mean_iou_ignores_255_and_absent_classes():
    pred = torch.tensor([[[0, 1], [2, 2]]])
    target = torch.tensor([[[0, 1], [2, 255]]])
    assert mean_iou_score(pred, target, num_classes=4) == pytest.approx(1.0)
    assert mean_iou_score(torch.tensor([[[1, 1], [1, 1]]]), torch.tensor([[[0, 0], [1, 1]]]), 2) == pytest.approx(0.25)


class TinySegNet(torch.nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, classes, 1)
        )

    def forward(self, x):
        return {"out": self.body(x)}  # the torchvision segmentation convention


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory):
    return shapes.write_segmentation_set(tmp_path_factory.mktemp("seg") / "set", "test", 6, size=64)


@pytest.fixture(scope="module")
def seg_ts_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("segmodel") / "seg.ts"
    torch.jit.trace(TinySegNet(), torch.rand(1, 3, 64, 64), strict=False).save(str(path))
    return path


@pytest.mark.slow
def test_torchscript_segmenter_on_images_and_masks(audit, tmp_path, seg_folder, seg_ts_model):
    path = seg_ts_model
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        path,
        "--task",
        "segment",
        "--input-size",
        "64",
        "--data",
        seg_folder,
        "--classes",
        seg_folder / "classes.txt",
        "--out",
        out,
        *SEG_FAST,
    )
    assert r.code == 0, r
    res = read_results(out)
    assert res["model"]["task"] == "segment" and res["data"]["layout"] == "images+masks" and res["data"]["labelled"]
    attacks = res["probes"]["attacks"]
    assert attacks["status"] == "ok" and res["probes"]["filters"]["status"] == "ok"
    assert (
        set(attacks["metrics"])
        == {
            "clean_miou",
            "robust_miou@linf=2/255",
            "robust_miou@linf=8/255",
            "apgd_miou@linf=2/255",
            "apgd_miou@linf=8/255",
            "fgsm_miou@linf=2/255",
            "fgsm_miou@linf=8/255",
        }
        | ATTACK_CHECKS
    )
    assert all(0 <= v <= 1 for v in attacks["metrics"].values())


@pytest.mark.slow
def test_segmenter_label_free_on_images_alone(audit, tmp_path, seg_folder, python_module):
    python_module(
        "segpkg",
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))\n",
    )
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "segpkg:build",
        "--task",
        "segment",
        "--input-size",
        "64",
        "--data",
        seg_folder / "images",
        "--out",
        out,
        *SEG_FAST,
    )
    assert r.code == 0, r
    res = read_results(out)
    assert res["data"]["labelled"] is False and "clean_miou" not in res["probes"]["attacks"]["metrics"]


def test_missing_mask_is_named(audit, tmp_path, seg_folder, seg_ts_model):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(seg_folder, data)
    victim = sorted((data / "masks").iterdir())[0]
    victim.unlink()
    r = audit(
        "run",
        "--model",
        seg_ts_model,
        "--task",
        "segment",
        "--input-size",
        "64",
        "--data",
        data,
        "--out",
        tmp_path / "out",
    )
    assert r.code == 2 and victim.name in r.err and "masks/" in r.err


def test_rgb_mask_is_refused(tmp_path):
    from auditor.data import _decode_pair
    from auditor.errors import AuditError
    from auditor.models.base import Preprocess

    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "m.png")
    with pytest.raises(AuditError, match="single-channel"):
        _decode_pair(tmp_path / "i.png", tmp_path / "m.png", "RGB", Preprocess(resize=(8, 8)).transform())


@pytest.mark.slow
def test_unet_recipe_trains_on_a_small_budget(tmp_path):
    """A re-run of the recipe on a small budget still learns: the loss goes down."""
    from zoo.shapes_unet import train

    report = train(tmp_path / "unet.pt", seed=0, budget=0.07)
    losses = report["losses"]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert (tmp_path / "unet.pt").is_file()
