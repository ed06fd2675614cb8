"""The zoo's digits-cnn: the shipped checkpoint is what the registry says, and the recipe reproduces it."""

from __future__ import annotations

import pytest
import torch

from zoo import get_entry
from zoo.registry import sha256_of


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
