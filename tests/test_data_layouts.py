"""--data: ImageFolder (labelled), flat folder (label-free), and the errors users hit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST, read_results


@pytest.mark.slow
def test_imagefolder_is_labelled(audit, tmp_path, digits_imagefolder):
    out = tmp_path / "out"
    r = audit("run", "--data", digits_imagefolder, "--out", out, *FAST)
    assert r.code == 0, r
    res = read_results(out)
    assert res["data"]["labelled"] is True and res["data"]["layout"] == "imagefolder" and res["data"]["n"] == 30
    # the PNG round trip keeps the images: the zoo model still reads its own digits
    assert res["probes"]["attacks"]["metrics"]["clean_accuracy"] >= 0.9


@pytest.mark.slow
def test_flat_folder_is_label_free_and_says_so(audit, tmp_path, digits_flat):
    out = tmp_path / "out"
    r = audit("run", "--data", digits_flat, "--out", out, *FAST)
    assert r.code == 0, r
    res = read_results(out)
    assert res["data"]["labelled"] is False and res["data"]["layout"] == "flat"
    attacks = res["probes"]["attacks"]
    assert "clean_accuracy" not in attacks["metrics"]
    assert any("label-free" in f["text"] for f in attacks["findings"])
    assert "Label-free data" in (out / "report.html").read_text()


def test_limit_draws_a_seeded_subset(audit, tmp_path, digits_imagefolder):
    out = tmp_path / "out"
    assert audit("run", "--data", digits_imagefolder, "--limit", "7", "--out", out, "--probes", "filters").code == 0
    res = read_results(out)
    assert res["data"]["n"] == 7 and res["data"]["available"] == 30


def test_empty_folder(audit, tmp_path):
    (tmp_path / "empty").mkdir()
    r = audit("run", "--data", tmp_path / "empty", "--out", tmp_path / "out")
    assert r.code == 2 and "no images found" in r.err


def test_mixed_folder(audit, tmp_path, digits_flat):
    mixed = tmp_path / "mixed"
    shutil.copytree(digits_flat, mixed)
    (mixed / "3").mkdir()
    r = audit("run", "--data", mixed, "--out", tmp_path / "out")
    assert r.code == 2 and "both images and sub-folders" in r.err


def test_unknown_class_folders(audit, tmp_path, digits_imagefolder):
    data = tmp_path / "data"
    shutil.copytree(digits_imagefolder, data)
    first = sorted(p for p in data.iterdir())[0]
    shutil.move(first, data / "cats")
    r = audit("run", "--data", data, "--out", tmp_path / "out")
    assert r.code == 2 and "cats" in r.err and "--classes" in r.err


def _bad_corpus(folder: Path, digit: np.ndarray) -> list[str]:
    """Every kind of awkward file, beside good ones; returns the names that cannot be read."""
    good = Image.fromarray(digit)
    good.convert("RGBA").save(folder / "rgba.png")
    good.convert("P").save(folder / "palette.png")
    Image.fromarray(digit.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    good.save(folder / "really_a_jpeg.png", format="JPEG")
    good.resize((300, 180)).save(folder / "large_and_wide.png")
    good.save(folder / "grey.png")
    full = (folder / "grey.png").read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image at all")
    return ["truncated.png", "empty.png", "notes.jpg"]


def test_unreadable_images_are_left_out_and_named(audit, tmp_path, digits_test):
    images, _ = digits_test
    digit = (images[0, 0] * 255).round().byte().numpy()
    data = tmp_path / "data"
    data.mkdir()
    bad = _bad_corpus(data, digit)
    out = tmp_path / "out"
    r = audit("run", "--data", data, "--probes", "filters", "--out", out)
    assert r.code == 0, r
    assert all(name in r.err for name in bad) and "Traceback" not in r.err
    facts = read_results(out)["data"]
    assert facts["n"] == 6 and facts["skipped"] == 3
    assert sorted(Path(line.split(":")[0]).name for line in facts["skipped_files"]) == sorted(bad)
    assert "truncated.png" in (out / "report.html").read_text()


def test_sixteen_bit_and_palette_images_decode_like_the_8_bit_one(tmp_path, digits_test):
    from auditor.data import load_data
    from auditor.models import ModelSpec, load_model

    images, _ = digits_test
    digit = (images[0, 0] * 255).round().byte().numpy()
    data = tmp_path / "data"
    data.mkdir()
    _bad_corpus(data, digit)
    adapter = load_model(ModelSpec(model="digits-cnn"))
    loaded = load_data(adapter, str(data), limit=None, seed=0)
    names = sorted(p.name for p in data.iterdir() if p.name not in ("truncated.png", "empty.png", "notes.jpg"))
    by_name = dict(zip(names, loaded.images))
    reference = by_name["grey.png"].float()
    for name in ("rgba.png", "palette.png", "sixteen_bit.png"):
        assert (by_name[name].float() - reference).abs().max() <= 1, name


def test_nothing_readable_empty_or_missing_is_exit_2(audit, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    r = audit("run", "--data", data, "--out", tmp_path / "out")
    assert r.code == 2 and "no images found" in r.err
    (data / "a.png").write_bytes(b"")
    (data / "b.jpg").write_text("text")
    r = audit("run", "--data", data, "--out", tmp_path / "out")
    assert r.code == 2 and "none of its 2 image(s) could be read" in r.err and "Traceback" not in r.err
    r = audit("run", "--data", tmp_path / "missing", "--out", tmp_path / "out")
    assert r.code == 2 and "no such folder" in r.err
    assert not (tmp_path / "out" / "report.html").exists()
