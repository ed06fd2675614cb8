"""The detection path: ultralytics YAML / images+labels data, ultralytics and torchvision detectors, mAP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor.metrics import detection_map
from tests.conftest import ATTACK_CHECKS, read_results
from zoo import shapes

DET_FAST = [
    "--set",
    "attacks.steps=2",
    "--set",
    "attacks.eps=8/255",
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
    "actmax.steps=4",  # 96 steps by default: 12 of the 21 CPU-seconds of a whole audit of yolov8n.yaml at 64 px
]


@pytest.fixture(scope="module")
def det_set(tmp_path_factory):
    return shapes.write_detection_set(tmp_path_factory.mktemp("det") / "set", {"val": 6}, size=64)


@pytest.fixture(scope="module")
def classes3(tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "classes.txt"
    path.write_text("circle\nsquare\ntriangle\n")
    return path


def ran_untrained(r) -> bool:
    """An audit of an untrained detector or segmenter ran: exit 0, or exit 1 with the verdict UNMEASURED where it
    finds none of the objects (auditor/degenerate.py)."""
    return "Traceback" not in r.err and (r.code == 0 or (r.code == 1 and "UNMEASURED" in r.out))


def test_map_of_perfect_and_empty_predictions():
    target = [torch.tensor([[1.0, 10, 10, 30, 30]])]
    perfect = [
        {"boxes": torch.tensor([[10.0, 10, 30, 30]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    ]
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    assert detection_map(perfect, target)["map50"] == pytest.approx(1.0)
    assert detection_map(empty, target)["map50"] == 0.0


def test_yolo_labels_become_pixel_boxes(tmp_path):
    from auditor.data import _read_yolo_labels

    (tmp_path / "a.txt").write_text("2 0.5 0.5 0.25 0.5\n")
    boxes = _read_yolo_labels(tmp_path / "a.txt", (64, 128))
    assert boxes.tolist() == [[2.0, 48.0, 16.0, 80.0, 48.0]]
    assert _read_yolo_labels(tmp_path / "missing.txt", (64, 64)).shape == (0, 5)  # no file: no objects


@pytest.mark.slow
def test_ultralytics_yaml_model_on_dataset_yaml(audit, tmp_path, det_set, classes3):
    """The ultralytics path with a tiny untrained model built from ultralytics' own yolov8n.yaml."""
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "yolov8n.yaml",
        "--classes",
        classes3,
        "--input-size",
        "64",
        "--data",
        det_set / "data.yaml",
        "--out",
        out,
        *DET_FAST,
    )
    assert ran_untrained(r), r
    res = read_results(out)
    assert res["model"]["task"] == "detect" and res["model"]["source"] == "ultralytics"
    assert res["data"]["layout"] == "ultralytics-yaml" and res["data"]["n"] == 6
    m = res["probes"]["attacks"]["metrics"]
    assert (
        set(m)
        == {
            "clean_map50",
            "robust_map50@linf=8/255",
            "apgd_map50@linf=8/255",
            "fgsm_map50@linf=8/255",
            "disappearance_rate@linf=8/255",
        }
        | ATTACK_CHECKS
    )
    assert m["disappearance_rate@linf=8/255"] is None or 0 <= m["disappearance_rate@linf=8/255"] <= 1
    assert res["probes"]["filters"]["status"] == "ok"


def test_images_and_labels_folder_and_label_free(audit, tmp_path, det_set, classes3):
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "yolov8n.yaml",
        "--classes",
        classes3,
        "--input-size",
        "64",
        "--data",
        det_set,
        "--out",
        out,
        "--probes",
        "attacks",
        *DET_FAST,
    )
    assert ran_untrained(r), r
    assert read_results(out)["data"]["layout"] == "images+labels"
    import shutil

    plain = shutil.copytree(det_set / "images" / "val", tmp_path / "plain")  # no labels/ beside it
    r = audit(
        "run",
        "--model",
        "yolov8n.yaml",
        "--classes",
        classes3,
        "--input-size",
        "64",
        "--data",
        plain,
        "--out",
        out,
        "--probes",
        "attacks",
        *DET_FAST,
    )
    assert ran_untrained(r), r
    assert read_results(out)["data"]["labelled"] is False


def test_ultralytics_name_offline_is_one_clear_line(audit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = audit("run", "--model", "yolov8n", "--offline", "--out", tmp_path / "out")
    assert r.code == 2, r
    assert "yolov8n.pt" in r.err and len(r.err.strip().splitlines()) == 1


def test_ultralytics_checkpoint_with_foreign_code_is_refused(audit, tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "best.pt"
    torch.save({"model": Evil()}, path)
    r = audit("run", "--model", path, "--out", tmp_path / "out")
    assert r.code == 2 and "--trust-model" in r.err
    assert not marker.exists()


def test_torchvision_detector_offline(audit, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    r = audit("run", "--model", "fasterrcnn_resnet50_fpn", "--offline", "--out", tmp_path / "out")
    assert r.code == 2 and "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in r.err


def test_torchvision_detector_with_weights_file(audit, tmp_path, det_set, classes3):
    """Architecture by name, COCO categories from the Weights enum, a state dict from a file, train-mode loss."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None)
    weights = tmp_path / "ssd.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "ssdlite320_mobilenet_v3_large",
        "--weights",
        weights,
        "--input-size",
        "64",
        "--data",
        det_set,
        "--limit",
        "2",
        "--out",
        out,
        "--probes",
        "attacks",
        *DET_FAST,
    )
    assert ran_untrained(r), r
    res = read_results(out)
    assert res["model"]["source"] == "torchvision" and res["model"]["task"] == "detect"
    assert res["probes"]["attacks"]["status"] == "ok"


@pytest.mark.slow
def test_torchvision_segmenter_with_weights_file(audit, tmp_path):
    import torchvision

    seg = shapes.write_segmentation_set(tmp_path / "seg", "test", 2, size=64)
    torch.manual_seed(0)
    net = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None)
    weights = tmp_path / "lraspp.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "lraspp_mobilenet_v3_large",
        "--weights",
        weights,
        "--data",
        seg,
        "--out",
        out,
        "--probes",
        "attacks",
        "--set",
        "attacks.steps=1",
        "--set",
        "attacks.eps=8/255",
        "--set",
        "attacks.gallery=0",
    )
    assert ran_untrained(r), r
    res = read_results(out)
    assert res["model"]["task"] == "segment" and res["model"]["classes"] == 21
    assert "clean_miou" in res["probes"]["attacks"]["metrics"]


@pytest.mark.slow
def test_yolo_recipe_trains_on_a_small_budget(tmp_path):
    """A re-run of the detector's recipe on a small budget still learns: the training loss goes down."""
    from zoo.shapes_yolo import train

    report = train(tmp_path / "y.pt", seed=0, budget=0.1)
    assert len(report["losses"]) >= 2 and report["losses"][-1] < report["losses"][0], report["losses"]
    assert Path(report["path"]).is_file()


def test_anchor_scores_are_differentiable_per_box():
    """Each kept box's score, read back at its anchor, equals NMS's score and has a gradient (Grad-CAM target)."""
    from auditor.models import ModelSpec, load_model

    model = load_model(ModelSpec(model="shapes-yolov8n")).eval()
    x = torch.from_numpy(shapes.render(shapes.scene_seed("test", 0)).image.copy()).permute(2, 0, 1)[None].float() / 255
    x.requires_grad_(True)
    ((dets, anchors),) = model.detect_with_anchors(model(x))
    rows = x.expand(len(anchors), -1, -1, -1)  # one row per box, as the gradcam probe batches them
    scores = model.anchor_scores(model(rows), anchors, dets["labels"])
    assert len(dets["boxes"]) >= 1 and torch.allclose(scores.detach(), dets["scores"], atol=1e-5)
    (grad,) = torch.autograd.grad(scores[0], x)
    assert grad.abs().sum() > 0


@pytest.mark.slow
def test_checkpoint_written_by_ultralytics(audit, tmp_path, det_set, classes3):
    """A *.pt saved by ultralytics' trainer (a pickled model) passes the globals check and audits."""
    from auditor.models.ultralytics import quiet_ultralytics

    quiet_ultralytics()
    from ultralytics import YOLO

    train_set = shapes.write_detection_set(tmp_path / "train", {"train": 4, "val": 4}, size=64)
    model = YOLO("yolov8n.yaml", task="detect")
    model.train(
        data=str(train_set / "data.yaml"),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        project=str(tmp_path / "runs"),
        name="t",
        exist_ok=True,
        plots=False,
        verbose=False,
        amp=False,
        pretrained=False,
        val=False,
    )
    last = Path(model.trainer.last)
    assert last.is_file()
    out = tmp_path / "out"
    r = audit("run", "--model", last, "--data", det_set, "--out", out, *DET_FAST)
    assert ran_untrained(r), r
    res = read_results(out)
    assert res["model"]["source"] == "ultralytics" and res["model"]["input"] == "3x64x64"
    assert res["model"]["classes"] == 3


@pytest.mark.slow
def test_ultralytics_seg_model_with_box_labels_scores_its_boxes(audit, tmp_path, det_set, classes3):
    """Box labels have no masks: the -seg model's boxes are scored, its masks are not (tests/test_instances.py
    covers the masks)."""
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "yolov8n-seg.yaml",
        "--classes",
        classes3,
        "--input-size",
        "64",
        "--data",
        det_set,
        "--out",
        out,
        *DET_FAST,
    )
    assert ran_untrained(r), r
    res = read_results(out)
    assert res["model"]["task"] == "detect" and any("-seg" in n for n in res["model"]["notes"])
    assert res["probes"]["attacks"]["status"] == "ok"
    assert not any("mask_map50" in k for k in res["probes"]["attacks"]["metrics"])


def test_dataset_names_map_to_model_classes_by_name(tmp_path, det_set):
    """YOLO-format ids count from 0 without a background; a model's own index space may not: match by name."""
    from auditor.data import load_data
    from auditor.errors import AuditError
    from auditor.models.base import ModelFacts, Preprocess
    from auditor.models.torchvision import TorchvisionDetectorAdapter

    def adapter(names):
        return TorchvisionDetectorAdapter(
            torch.nn.Identity(),
            facts=ModelFacts(name="m", source="t"),
            class_names=names,
            input_size=(64, 64),
            channels=3,
            mean=(0.0,),
            std=(1.0,),
            preprocess=Preprocess(resize=(64, 64)),
            epsilons=(),
        )

    plain = load_data(adapter(["circle", "square", "triangle"]), str(det_set / "data.yaml"), limit=None, seed=0)
    shifted = load_data(
        adapter(["__background__", "N/A", "Triangle", "circle", "square"]),
        str(det_set / "data.yaml"),
        limit=None,
        seed=0,
    )
    remap = {0: 3, 1: 4, 2: 2}
    for a, b in zip(plain.labels, shifted.labels):
        assert [remap[int(c)] for c in a[:, 0]] == b[:, 0].long().tolist()
        assert torch.equal(a[:, 1:], b[:, 1:])
    with pytest.raises(AuditError, match="not among the model"):
        load_data(adapter(["cat", "dog"]), str(det_set / "data.yaml"), limit=None, seed=0)


def test_map50_alone_equals_map50_of_the_full_coco_evaluation():
    g = torch.Generator().manual_seed(0)
    targets, preds = [], []
    for _ in range(12):
        boxes = torch.rand(5, 2, generator=g) * 100
        boxes = torch.cat([boxes, boxes + 10 + torch.rand(5, 2, generator=g) * 30], 1)
        targets.append(torch.cat([torch.randint(0, 3, (5, 1), generator=g).float(), boxes], 1))
        jitter = boxes + torch.randn(5, 4, generator=g) * 4  # some above IoU 0.5, some below
        preds.append({"boxes": jitter, "scores": torch.rand(5, generator=g), "labels": targets[-1][:, 0].long()})
    full, alone = detection_map(preds, targets), detection_map(preds, targets, map50_only=True)
    assert 0.2 < full["map50"] < 1 and alone == {"map50": full["map50"]}
