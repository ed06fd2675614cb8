"""--data: ImageFolder (labelled), flat folder (label-free), and the errors users hit."""

from __future__ import annotations

import shutil

from tests.conftest import FAST, read_results


def test_imagefolder_is_labelled(audit, tmp_path, digits_imagefolder):
    out = tmp_path / "out"
    r = audit("run", "--data", digits_imagefolder, "--out", out, *FAST)
    assert r.code == 0, r
    res = read_results(out)
    assert res["data"]["labelled"] is True and res["data"]["layout"] == "imagefolder" and res["data"]["n"] == 30
    # the PNG round trip keeps the images: the zoo model still reads its own digits
    assert res["probes"]["attacks"]["metrics"]["clean_accuracy"] >= 0.9


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


def test_corrupt_image_is_named(audit, tmp_path, digits_flat):
    data = tmp_path / "data"
    shutil.copytree(digits_flat, data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = audit("run", "--data", data, "--out", tmp_path / "out")
    assert r.code == 2, r
    assert "broken.png" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "out" / "report.html").exists()
