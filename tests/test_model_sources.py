"""Model sources: torchvision (offline error, --weights), TorchScript, torch.export, module:callable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, TinyNet, read_results, run_cli


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_uncached_torchvision_model_offline(audit, tmp_path, empty_torch_home):
    r = audit("run", "--model", "resnet50", "--offline", "--out", tmp_path / "out")
    assert r.code == 2, r
    line = r.err.strip()
    assert len(line.splitlines()) == 1
    expected = empty_torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(expected) in line and "--weights PATH" in line


@pytest.mark.slow
def test_uncached_torchvision_model_without_network(tmp_path):
    """No --offline, but the download cannot connect: the same one-line error, exit 2."""
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "th"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    exe = Path(sys.executable).with_name("audit")
    proc = subprocess.run(
        [str(exe), "run", "--model", "vgg16", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "vgg16-397923af.pth" in proc.stderr and "--weights PATH" in proc.stderr
    assert not (tmp_path / "th" / "hub" / "checkpoints" / "vgg16-397923af.pth").exists()


@pytest.fixture(scope="module")
def torchvision_run(tmp_path_factory, digits_flat) -> dict:
    """results.json of `audit run --model mobilenet_v3_small --weights FILE` on two digits: attacks alone, at the
    attack grid the model source chose (no attacks.eps)."""
    import torchvision

    base = tmp_path_factory.mktemp("torchvision")
    weights = base / "mnv3.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), weights)
    out = base / "out"
    code = run_cli(
        "run",
        "--model",
        "mobilenet_v3_small",
        "--weights",
        weights,
        "--data",
        digits_flat,
        "--limit",
        "2",
        "--probes",
        "attacks",
        "--out",
        out,
        "--set",
        "attacks.steps=1",
        "--set",
        "attacks.gallery=0",
    )
    assert code == 0, f"audit run of mobilenet_v3_small exited {code}"
    return read_results(out)


@pytest.mark.slow
def test_torchvision_name_with_weights_file(torchvision_run):
    """Architecture by name, ImageNet categories and transforms from the Weights enum, state dict from a file."""
    res = torchvision_run
    assert res["model"]["source"] == "torchvision" and res["model"]["classes"] == 1000
    assert res["model"]["input"] == "3x224x224" and res["model"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert res["probes"]["attacks"]["status"] == "ok"
    # the note names the user's weights; the Weights enum gave only the preprocessing
    assert res["model"]["notes"] == [
        "weights mnv3.pth, preprocessing of MobileNet_V3_Small_Weights.IMAGENET1K_V1: resize 256, centre crop 224"
    ]


def _eps(text: str) -> float:
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator or 1)


@pytest.mark.slow
def test_torchvision_classifier_is_attacked_up_to_robustbench_imagenet_budget(torchvision_run):
    """Unless attacks.eps says otherwise, an ImageNet classifier is attacked on a rising grid of ε in pixel units
    (images in [0, 1], the normalisation inside the model) that ends at 4/255, RobustBench's ImageNet L-inf budget,
    so its robust accuracy reads against the leaderboard's and a gate can name robust_accuracy@linf=4/255."""
    metrics = torchvision_run["probes"]["attacks"]["metrics"]
    grid = [key.split("=", 1)[1] for key in metrics if key.startswith("robust_accuracy@linf=")]
    values = [_eps(e) for e in grid]
    assert len(grid) >= 3, grid  # a curve, not one point
    assert all(a < b for a, b in zip(values, values[1:])), grid  # rising, no repeats
    assert grid[-1] == "4/255" and values[-1] == pytest.approx(4 / 255), grid  # not 4/255 divided by an ImageNet std
    assert values[0] > 0, grid
    assert all(0 <= metrics[f"robust_accuracy@linf={e}"] <= 1 for e in grid)


def test_weights_refuse_pickled_code(audit, tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"net": TinyNet()}, bad)  # a pickled module, not a state dict
    r = audit("run", "--weights", bad, "--out", tmp_path / "out")
    assert r.code == 2 and "--trust-model" in r.err


def test_zoo_checkpoint_hash_is_checked(audit, tmp_path, monkeypatch):
    import zoo.registry

    fake = tmp_path / "checkpoints"
    fake.mkdir()
    (fake / "digits-cnn.pt").write_bytes(b"tampered")
    monkeypatch.setattr(zoo.registry, "CHECKPOINT_DIR", fake)
    r = audit("run", "--out", tmp_path / "out")
    assert r.code == 2 and "sha256" in r.err


@pytest.fixture
def classes_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n")
    return path


@pytest.mark.slow
def test_torchscript_model(audit, tmp_path, digits_imagefolder, classes_file):
    torch.manual_seed(0)
    path = tmp_path / "tiny.ts"
    torch.jit.script(TinyNet()).save(str(path))
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        path,
        "--input-size",
        "28",
        "--classes",
        classes_file,
        "--data",
        digits_imagefolder,
        "--out",
        out,
        *FAST,
    )
    assert r.code == 0, r
    res = read_results(out)
    assert res["model"]["source"] == "torchscript" and res["model"]["sha256"]
    assert res["data"]["labelled"] is True  # folders 0..9 map to output indices
    assert res["probes"]["filters"]["status"] == "ok" and res["probes"]["attacks"]["status"] == "ok"


def test_torchscript_needs_input_size(audit, tmp_path):
    path = tmp_path / "tiny.ts"
    torch.jit.script(TinyNet()).save(str(path))
    r = audit("run", "--model", path, "--out", tmp_path / "out")
    assert r.code == 2 and "--input-size" in r.err


@pytest.mark.slow
def test_export_program(audit, tmp_path, digits_flat):
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(TinyNet().eval(), (torch.rand(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    out = tmp_path / "out"
    r = audit("run", "--model", path, "--input-size", "28x28", "--data", digits_flat, "--out", out, *FAST)
    assert r.code == 0, r
    res = read_results(out)
    assert res["model"]["source"] == "export" and res["probes"]["attacks"]["status"] == "ok"


@pytest.mark.slow
def test_import_path_model(audit, tmp_path, digits_imagefolder, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),\n"
        "                               torch.nn.Flatten(), torch.nn.Linear(4, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    r = audit(
        "run",
        "--model",
        "mypkg.nets:build",
        "--input-size",
        "28",
        "--mean",
        "0.13",
        "--std",
        "0.31",
        "--data",
        digits_imagefolder,
        "--out",
        out,
        *FAST,
    )
    assert r.code == 0, r
    res = read_results(out)
    assert res["model"]["source"] == "import" and res["model"]["input"] == "1x28x28"
    assert res["data"]["labelled"] is True


def test_import_path_errors(audit, tmp_path):
    r = audit("run", "--model", "no_such_pkg.mod:build", "--out", tmp_path / "out")
    assert r.code == 2 and "cannot import no_such_pkg.mod" in r.err
    r = audit("run", "--model", "os.path:nope", "--out", tmp_path / "out")
    assert r.code == 2 and "no attribute nope" in r.err


def test_model_returning_nan_is_an_input_error(audit, tmp_path, digits_flat, python_module):
    python_module(
        "nanpkg",
        "import torch\n"
        "class Nan(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 10, 3)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean(dim=(2, 3)) * float('nan')\n",
    )
    r = audit("run", "--model", "nanpkg:Nan", "--input-size", "28", "--data", digits_flat, "--out", tmp_path / "out")
    assert r.code == 2 and "NaN" in r.err


@pytest.mark.parametrize("how", ["weights", "model-pt", "model-ultralytics-name"])
def test_a_pickle_that_would_create_a_file_is_refused_on_every_path(audit, tmp_path, how):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / ("yolov8n.pt" if how == "model-ultralytics-name" else "model.pt")
    torch.save({"model": Evil(), "state_dict": Evil()}, path)
    args = ["--model", "digits-cnn", "--weights", path] if how == "weights" else ["--model", path]
    r = audit("run", *args, "--limit", "4", "--probes", "filters", "--out", tmp_path / "out")
    assert r.code == 2 and "--trust-model" in r.err and "Traceback" not in r.err, r
    assert not marker.exists()
