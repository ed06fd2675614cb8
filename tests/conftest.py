"""Shared fixtures: the zoo's digits model and small data folders made from its digits, a CLI runner, the default
audit run once per session, and a probe Context built without the runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: one intra-op thread per worker (and for the CLIs they start), or N workers' thread pools
    # would oversubscribe the cores, which slows torch tenfold.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
from PIL import Image

import cli
from auditor.data import EvalData
from auditor.models import ModelSpec, load_model
from auditor.probes.base import Context, parse_params
from auditor.runner import make_progress

# metrics the attacks probe reports on every task besides the metric under attack
ATTACK_CHECKS = {"median_min_eps", "zero_gradient_share", "nonfinite_gradient_share", "suspect_masking"}
FAST = [
    "--set",
    "attacks.steps=3",
    "--set",
    "attacks.gallery=2",
    "--set",
    "attacks.min_eps_images=8",
    "--set",
    "attacks.bisect=2",
    "--set",
    "attacks.check_images=4",
    "--set",
    "attacks.square_queries=20",
    "--set",
    "patch.steps=2",
    # actmax and gradcam on few steps: 7 of the 15 CPU-seconds of a whole audit of 30 digits at their defaults
    "--set",
    "actmax.steps=4",
    "--set",
    "gradcam.images=2",
    "--set",
    "gradcam.steps=3",
    "--set",
    "gradcam.stages=2",
]


class Outcome:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"Outcome(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


def run_cli(*args) -> int:
    """Run the CLI in-process, as `audit ARGS...`, and return its exit code (for fixtures that share a run)."""
    try:
        cli.main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.fixture
def audit(capsys):
    """Run the CLI in-process, as `audit ARGS...`, and return its exit code and output."""

    def call(*args: str) -> Outcome:
        capsys.readouterr()
        code = run_cli(*args)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call


@pytest.fixture
def python_module(tmp_path, monkeypatch):
    """write(name, source): an importable module `name`, for `--model name:callable`."""

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))

    return write


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _save(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image[0] * 255).round().byte().numpy(), mode="L").save(path)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """The true default audit, run once per session exactly as a user runs it: the installed
    `audit` script, `audit run --out DIR` and no other option, in a fresh working directory.

    Returns DIR (report.html, results.json, junit.xml, summary.md and the probes' files);
    tests share it, so treat it as read-only. About 40 s on an idle 2-core machine; DIR/../audit.log
    keeps the command, its exit code, how long it took and its output."""
    base = tmp_path_factory.mktemp("default-run")
    out = base / "out"
    exe = Path(sys.executable).with_name("audit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())"]
    started = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "run", "--out", str(out)], cwd=base, env=dict(os.environ), capture_output=True, text=True, timeout=1200
    )
    seconds = time.perf_counter() - started
    (base / "audit.log").write_text(
        f"$ audit run --out {out}\nexit {proc.returncode} after {seconds:.1f} s\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert proc.returncode == 0, (
        f"default `audit run` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    for name in ("report.html", "results.json"):
        assert (out / name).is_file(), f"default `audit run` wrote no {name}"
    return out


@pytest.fixture(scope="module")
def digits_model():
    """The zoo's digits-cnn in eval mode. One per test module, not per session: tests hook into it and check that
    a probe leaves no gradient on its weights, so a module never sees what another module's probes did to it."""
    return load_model(ModelSpec(model="digits-cnn")).eval()


def probe_context(
    probe: str,
    adapter,
    out_dir: Path,
    images: torch.Tensor | None = None,
    labels=None,
    *,
    data: EvalData | None = None,
    labelled: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    probes: tuple[str, ...] = (),
) -> Context:
    """The Context the runner would give probe `probe` on the CPU, without progress bars: over `data`, or over these
    images and labels (labelled unless said otherwise)."""
    if data is None:
        source = "zoo" if labelled else "flat"
        data = EvalData(name="t", images=images, labels=labels, labelled=labelled, source=source, total=len(labels))
    return Context(
        adapter=adapter,
        data=data,
        device=torch.device("cpu"),
        seed=seed,
        batch_size=batch_size,
        out_dir=out_dir,
        probe_name=probe,
        progress=make_progress(False),
        probes=probes,
    )


def make_probe(probe_class, **params):
    """A probe with these parameters, parsed from text as `--set NAME.KEY=VALUE` would give them."""
    return probe_class(parse_params(probe_class, {k: str(v) for k, v in params.items()}))


@pytest.fixture(scope="session")
def digits_test():
    from zoo.digits_cnn import load_test_set

    return load_test_set()


@pytest.fixture(scope="session")
def digits_imagefolder(tmp_path_factory, digits_test):
    """30 held-out digits as PNGs in class sub-folders 0..9."""
    root = tmp_path_factory.mktemp("imagefolder")
    images, labels = digits_test
    for i in range(30):
        _save(images[i], root / str(int(labels[i])) / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def digits_flat(tmp_path_factory, digits_test):
    """12 held-out digits as PNGs in one folder, no labels."""
    root = tmp_path_factory.mktemp("flat")
    images, _ = digits_test
    for i in range(12):
        _save(images[i], root / f"img{i:03d}.png")
    return root


class TinyNet(torch.nn.Module):
    """A small grey-image classifier for the non-zoo model sources."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
