"""Degenerate audits: a reference with nothing in it, too few images, (nearly) constant predictions, and the cost of
attacking a torchvision detector. Each case is a small untrained model on generated images, run as a user runs it;
each test asserts the status, the null metrics and the wording, and every probe's findings are scanned for two
that contradict each other."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torchvision
from PIL import Image

from auditor.gates import verdict
from auditor.models import ModelSpec, load_model
from auditor.results import load
from tests.conftest import FAST, read_results

DEPENDENT = ("attacks", "augment", "patch")  # the probes whose figures are measured against the reference
CHEAP = [*FAST, "--set", "augment.shifts=gaussian_noise,rotate", "--set", "augment.severities=1,3"]

MODELS = """
import torch
from auditor.models import ModelSpec, load_model

class Shifted(torch.nn.Module):
    '''digits-cnn (its own normalisation inside), class scores rolled by one: every clean prediction wrong.'''
    def __init__(self):
        super().__init__()
        self.digits = load_model(ModelSpec(model="digits-cnn"))
    def forward(self, x):
        return self.digits(x).roll(1, dims=1)

class Constant(torch.nn.Module):
    '''Class scores that ignore the image: `ties` all equal (float-noise margins), else class 0 ahead by 5.'''
    def __init__(self, ties):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 10, 3)
        self.ties = ties
    def forward(self, x):
        faint = self.conv(x).mean(dim=(2, 3)) * (0.0 if self.ties else 1e-3)
        ahead = torch.zeros(10, device=x.device) if self.ties else torch.nn.functional.one_hot(
            torch.tensor(0, device=x.device), 10).float() * 5
        return faint + ahead

class Background(torch.nn.Module):
    '''A segmenter of 3 classes that predicts background (class 0) on every pixel.'''
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    def forward(self, x):
        bias = torch.tensor([4.0, 0.0, 0.0], device=x.device).view(1, 3, 1, 1)
        return self.conv(x) * 0.01 + bias

def shifted():
    return Shifted()
def ties():
    return Constant(True)
def one_class():
    return Constant(False)
def background():
    return Background()
"""

# Two findings of one probe that cannot both be true: (pattern A, pattern B, why).
CONTRADICTIONS = [
    (r"below half of clean", r"withstand every attack", "the attack halves the metric, yet most images withstand it"),
    (r"nothing to (measure|hide|explain)", r"\d+(\.\d+)?% ", "nothing was measured, yet a measured share is quoted"),
    (r"cuts .* from 100\.0% to 0\.0%", r"keeps .* at 100\.0%", "the metric both falls to 0 and stays whole"),
]


def contradictions(result: dict) -> list[str]:
    """Pairs of one probe's findings that contradict each other (CONTRADICTIONS), and a probe with nothing to measure
    that says more than that."""
    texts = [f["text"] for f in result["findings"]]
    found = [
        f"{why}: {a!r} / {b!r}"
        for pa, pb, why in CONTRADICTIONS
        for a in texts
        for b in texts
        if a is not b and re.search(pa, a) and re.search(pb, b)
    ]
    gone = result.get("unmeasured")
    if gone and all(result["metrics"].get(k) is None for k in gone["metrics"] if k != "score") and len(texts) != 1:
        found.append(f"nothing measured, yet {len(texts)} findings: {texts}")
    return found


def scan(results: dict) -> None:
    for name, p in results["probes"].items():
        assert not contradictions(p), (name, contradictions(p))


@pytest.fixture(scope="module")
def models_module(tmp_path_factory):
    base = tmp_path_factory.mktemp("degenerate-models")
    (base / "degenerate_models.py").write_text(MODELS)
    return base


@pytest.fixture
def degenerate(models_module, monkeypatch):
    monkeypatch.syspath_prepend(str(models_module))
    return "degenerate_models"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six generated 3-channel scenes (the shapes' images), label-free."""
    from zoo import shapes

    root = shapes.write_segmentation_set(tmp_path_factory.mktemp("scenes"), "test", 6, size=64)
    flat = root.parent / "flat"
    flat.mkdir()
    for f in sorted((root / "images").iterdir()):
        Image.open(f).convert("RGB").save(flat / f.name)
    return flat


def assert_nothing_measured(r, out, says: str) -> dict:
    """Exit 1, verdict UNMEASURED, and every dependent probe: ok, no score, its figures null, one finding."""
    assert r.code == 1, r
    assert "UNMEASURED" in r.out and says in r.out, r
    res = read_results(out)
    assert any(f["text"].startswith("nothing to measure:") and f.get("key") for f in res["findings"])
    for name in DEPENDENT:
        p = res["probes"][name]
        assert p["status"] == "ok" and p["score"] is None, (name, p)
        nulled = [k for k in p["metrics"] if not k.startswith("clean_")]
        assert nulled and all(p["metrics"][k] is None for k in nulled), (name, p["metrics"])
        kept = {k for k, v in p["metrics"].items() if v is not None}  # the clean figures of labelled data
        assert set(p["metrics"]) - kept | {"score"} == set(p["unmeasured"]["metrics"]), name
        assert [f["severity"] for f in p["findings"]] == ["high"] and says in p["findings"][0]["text"], (name, p)
    scan(res)
    assert res["score"] is None
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Nothing measured" in html and says in html
    return res


@pytest.mark.slow
def test_detector_that_finds_nothing_measures_nothing(audit, tmp_path, photos):
    """An untrained torchvision detector on label-free scenes finds no object: attacks, augment and patch report null
    figures (never 0) with one finding each, no attack is run, a gate on them fails, and the verdict says why."""
    torch.manual_seed(0)
    net = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    r = audit(
        "run", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", tmp_path / "w.pth",
        "--input-size", "64", "--data", photos, "--probes", "attacks,augment,patch,gradcam",
        "--gate", "attacks.score >= 0.1", "--out", out, *CHEAP,
    )  # fmt: skip
    assert r.code == 1, r
    res = read_results(out)
    gate = res["gates"][0]
    assert not gate["passed"] and "not measured" in gate["message"] and "finds no object" in gate["message"]
    assert res["probes"]["attacks"]["metrics"]["disappearance_rate@linf=4/255"] is None
    assert res["probes"]["attacks"]["seconds"] < res["run"]["seconds"]  # ran, but attacked nothing
    scan(res)
    assert "finds no object" in res["findings"][0]["text"]
    # without the gate: the same null figures and the verdict UNMEASURED, exit 1
    r = audit(
        "run", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", tmp_path / "w.pth",
        "--input-size", "64", "--data", photos, "--probes", "attacks,augment,patch", "--out", tmp_path / "o2", *CHEAP,
    )  # fmt: skip
    assert_nothing_measured(r, tmp_path / "o2", "finds no object")


def test_segmenter_that_predicts_only_background_measures_nothing(audit, tmp_path, photos, degenerate):
    out = tmp_path / "out"
    classes = tmp_path / "classes.txt"
    classes.write_text("background\ncircle\nsquare\n")
    r = audit(
        "run", "--model", f"{degenerate}:background", "--task", "segment", "--input-size", "64", "--classes", classes,
        "--data", photos, "--probes", "attacks,augment,patch,gradcam", "--out", out, *CHEAP,
    )  # fmt: skip
    assert_nothing_measured(r, out, "predicts only background")


def test_classifier_with_no_correct_image_measures_nothing(audit, tmp_path, digits_imagefolder, degenerate):
    """Labelled: the clean accuracy is measured (0.0) and kept; what depends on a correct image is null."""
    out = tmp_path / "out"
    r = audit(
        "run", "--model", f"{degenerate}:shifted", "--input-size", "28", "--data", digits_imagefolder,
        "--probes", "attacks,augment,patch", "--out", out, *CHEAP,
    )  # fmt: skip
    res = assert_nothing_measured(r, out, "none of the 30 images is classified correctly")
    assert res["probes"]["attacks"]["metrics"]["clean_accuracy"] == 0.0
    assert res["probes"]["augment"]["metrics"]["clean_accuracy"] == 0.0


def test_too_few_images_skips_the_probe_with_its_minimum(audit, tmp_path):
    """--limit 1: patch cannot hold an image out, so it is skipped with the reason and the minimum; the others run;
    exit 0."""
    out = tmp_path / "out"
    r = audit("run", "--limit", "1", "--out", out, *CHEAP)
    assert r.code == 0, r
    res = read_results(out)
    patch = res["probes"]["patch"]
    assert patch["status"] == "skipped" and "at least 2 images" in patch["reason"] and "has 1" in patch["reason"]
    assert {p["status"] for n, p in res["probes"].items() if n != "patch"} == {"ok"}, res["probes"]
    assert "PASSED" in r.out and "at least 2 images" in r.out
    scan(res)


def test_constant_label_free_predictions_are_not_meaningful(audit, tmp_path, digits_flat, degenerate):
    """Every class score equal: the run's key findings say so, the label-free rates are marked not meaningful, a gate
    on them fails and the verdict is UNMEASURED."""
    out = tmp_path / "out"
    r = audit(
        "run", "--model", f"{degenerate}:ties", "--input-size", "28", "--data", digits_flat,
        "--probes", "attacks,augment,patch", "--gate", "augment.score >= 0", "--out", out, *CHEAP,
    )  # fmt: skip
    assert r.code == 1, r
    res = load(out)
    assert res.findings[0].severity == "high" and "tie up to float rounding" in res.findings[0].text
    for name in DEPENDENT:
        p = res.probes[name]
        assert p.unmeasured and "near-ties" in p.unmeasured["why"], name
        assert "score" in p.unmeasured["metrics"] and len(p.unmeasured["metrics"]) > 1, name
        assert any(f.text.startswith("not meaningful:") for f in p.findings), name
    assert res.score is None  # no score marked not meaningful counts
    assert not res.gates[0].passed and "not measured" in res.gates[0].message
    assert "FAILED: a gate failed" in r.out  # a failed gate comes first; without one, the verdict says why
    assert verdict(dataclasses.replace(res, gates=())).startswith("UNMEASURED: attacks: label-free rates")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Not meaningful" in html and "(not meaningful)" in html
    assert html.index("tie up to float rounding") < html.index('id="probe-')  # among the key findings, on top
    scan(read_results(out))


def test_one_class_for_nearly_every_image_is_a_key_finding(audit, tmp_path, digits_imagefolder, degenerate):
    """Labelled and one class for every image: a high key finding, but accuracy is still a measurement (no mark).
    (augment: the attacks probe would rightly call an image-blind model SUSPECT, its unbounded attack failing.)"""
    out = tmp_path / "out"
    r = audit(
        "run", "--model", f"{degenerate}:one_class", "--input-size", "28", "--data", digits_imagefolder,
        "--probes", "augment", "--out", out, *CHEAP,
    )  # fmt: skip
    res = load(out)
    assert [f.text for f in res.findings] == [
        "(nearly) constant predictions: class '0' is predicted for 100% of the 30 images; check the weights and the "
        "preprocessing (--mean, --std, the class order) before reading further"
    ]
    assert res.probes["augment"].unmeasured is None and res.probes["augment"].score is not None
    assert r.code == 0 and "PASSED" in r.out, r


def test_accuracy_at_chance_is_a_key_finding_and_the_figures_stay(audit, tmp_path):
    """shapes-lite0-scratch fits its 90 training crops and guesses on held-out ones: its relative figures (augment
    keeps 99.6% of a chance-level accuracy) are luck, and the run says so first; they are still what happened, so
    nothing is marked and the verdict stands. The fine-tuned model on the same crops gets no such finding."""
    out = tmp_path / "scratch"
    r = audit("run", "--model", "shapes-lite0-scratch", "--probes", "filters", "--out", out)
    res = load(out)
    assert len(res.findings) == 1 and res.findings[0].severity == "high", res.findings
    text = res.findings[0].text
    assert text.startswith(
        "accuracy at chance level: clean accuracy 37.5% (95%: 24.2%-53.0%) is not above chance, 42.5% "
    )
    assert "(the share of the most common label among the 40 images)" in text and "not robustness" in text
    assert r.code == 0 and "PASSED" in r.out and "accuracy at chance level" in r.out, r
    out = tmp_path / "tuned"
    assert audit("run", "--model", "shapes-lite0", "--probes", "filters", "--out", out).code == 0
    assert not load(out).findings


def test_chance_level_needs_enough_images_and_one_correct():
    from auditor.tasks import TASKS

    classify = TASKS["classify"]
    labels = torch.arange(30) % 3
    assert classify.chance_level(labels.roll(1), labels, labelled=True) is None  # accuracy 0: nothing to measure
    guess = labels.clone()
    guess[10:] = (labels[10:] + 1) % 3  # 10 of 30 right: a third, as guessing gets
    assert "33.3% (95%: 19.2%-51.2%) is not above chance, 33.3%" in classify.chance_level(guess, labels, True)
    assert classify.chance_level(guess, labels, labelled=False) is None
    assert classify.chance_level(guess[:19], labels[:19], True) is None  # too few images to tell
    assert classify.chance_level(labels, labels, True) is None


def test_an_ordinary_model_has_no_run_findings(audit, tmp_path, digits_imagefolder):
    out = tmp_path / "out"
    assert audit("run", "--data", digits_imagefolder, "--probes", "filters", "--out", out).code == 0
    res = read_results(out)
    assert "findings" not in res and all("unmeasured" not in p for p in res["probes"].values())


def test_torchvision_detector_attack_keeps_the_predicting_proposal_budgets(tmp_path):
    """The attack's objective runs the model in train mode for its losses, on as many region proposals as the model
    keeps when it predicts (150 for mobilenet-320, not training's 2,000): the cost that made an attack step 2.9x the
    model's own forward+backward (bench/detector_step.py). The training budgets are back afterwards."""
    torch.manual_seed(0)
    net = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    adapter = load_model(
        ModelSpec(model="fasterrcnn_mobilenet_v3_large_320_fpn", weights=str(tmp_path / "w.pth"), input_size=(96, 96))
    ).eval()
    rpn, roi = adapter.net.rpn, adapter.net.roi_heads
    seen = []
    hook = roi.register_forward_pre_hook(lambda _m, args: seen.append([len(p) for p in args[1]]))
    x = torch.rand(2, 3, 96, 96, requires_grad=True)
    boxes = [torch.tensor([[1.0, 10, 10, 50, 60]]), torch.tensor([[2.0, 30, 20, 90, 80]])]
    (grad,) = torch.autograd.grad(adapter.objective(x, boxes).sum(), x)
    hook.remove()
    testing = rpn._post_nms_top_n["testing"]
    # the proposals the ROI head saw, plus the reference boxes train mode adds to them
    assert seen and all(n <= testing + 1 for n in seen[0]), (seen, testing)
    assert rpn._pre_nms_top_n["training"] == 2000 and rpn._post_nms_top_n["training"] == 2000
    assert adapter.net.training is False and grad.abs().sum() > 0


def test_the_scan_catches_the_contradictions_this_issue_started_from():
    """The findings of an untrained Faster R-CNN on 3 photographs before this work: the scan must flag them."""
    attacks = {
        "findings": [
            {
                "text": "the worst case over APGD (task loss) + Square (task score) at ε=0.5/255 cuts agreement with the "
                "clean prediction from 100.0% to 0.0% (below half of clean)"
            },
            {
                "text": "more than half of 3 images withstand every attack at the largest ε (0.01569): the median minimal "
                "ε is at least that"
            },
        ],
        "metrics": {},
    }
    patch = {
        "findings": [
            {"text": "nothing to hide: the detector finds none of the 0 held-out objects without a patch"},
            {"text": "patches trained on 1 images and scored on 2 held-out images; 50% share of found objects hidden"},
        ],
        "metrics": {},
    }
    assert contradictions(attacks) and contradictions(patch)
    nothing = {"findings": [{"text": "nothing to measure: x"}, {"text": "y"}], "metrics": {"a": None}}
    nothing["unmeasured"] = {"why": "x", "metrics": ["score", "a"]}
    assert contradictions(nothing)
