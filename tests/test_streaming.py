"""Streamed evaluation sets: decoded from their files for every batch, the same images as in memory."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from auditor.data import load_data
from auditor.errors import AuditError
from auditor.loading import StreamedImages
from auditor.models import ModelSpec, load_model
from tests.conftest import FAST, read_results
from zoo import shapes


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))
    return torch.equal(a, b)


@pytest.fixture(scope="module")
def unet():
    return load_model(ModelSpec(model="shapes-unet")).eval()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_set_gives_the_images_and_digest_it_gives_in_memory(tmp_path, unet, workers):
    root = shapes.write_segmentation_set(tmp_path / "seg", "test", 9, size=64)
    kept = load_data(unet, str(root), limit=None, seed=0, stream=False, workers=workers)
    streamed = load_data(unet, str(root), limit=None, seed=0, stream=True, workers=workers)
    assert isinstance(streamed.images, StreamedImages) and not kept.streamed
    assert streamed.digest() == kept.digest()
    assert streamed.facts()["streamed"] is True and "streamed" not in kept.facts()
    for index in (slice(2, 7), torch.tensor([8, 0, 3]), [4]):
        assert torch.equal(streamed.images_at(index), kept.images_at(index))
        assert _same(streamed.labels_at(index), kept.labels_at(index))
    pairs = list(zip(streamed.batches(4), kept.batches(4), strict=True))
    assert len(pairs) == 3
    for (xs, ys), (xk, yk) in pairs:
        assert torch.equal(xs, xk) and _same(ys, yk)


def test_unreadable_files_are_named_and_the_digest_still_matches(tmp_path, unet):
    root = shapes.write_segmentation_set(tmp_path / "seg", "test", 40, size=64)
    victim = sorted((root / "images").iterdir())[5]
    victim.write_bytes(b"not a png")
    kept = load_data(unet, str(root), limit=None, seed=0, stream=False, workers=2)
    streamed = load_data(unet, str(root), limit=None, seed=0, stream=True, workers=2)
    for data in (kept, streamed):
        assert len(data) == 39 and len(data.skipped) == 1 and victim.name in data.skipped[0]
    assert streamed.digest() == kept.digest()  # hashed again from the files: the pass hashed the skipped one's slot
    assert torch.equal(streamed.images_at(torch.arange(39)), kept.images_at(torch.arange(39)))


def test_a_set_too_large_for_memory_streams_by_itself(tmp_path, unet, monkeypatch):
    import auditor.loading

    root = shapes.write_segmentation_set(tmp_path / "seg", "test", 3, size=64)
    assert not load_data(unet, str(root), limit=None, seed=0).streamed
    monkeypatch.setattr(auditor.loading, "MEMORY_LIMIT", 3 * 3 * 160 * 160 - 1)  # one byte short of the decoded set
    assert load_data(unet, str(root), limit=None, seed=0).streamed
    assert not load_data(unet, str(root), limit=None, seed=0, stream=False).streamed


def test_an_error_in_a_decoding_worker_is_the_same_one_line_error(tmp_path, unet):
    root = shapes.write_segmentation_set(tmp_path / "seg", "test", 3, size=64)
    mask = sorted((root / "masks").iterdir())[1]
    Image.new("RGB", (64, 64)).save(mask)
    with pytest.raises(AuditError, match="single-channel"):
        load_data(unet, str(root), limit=None, seed=0, workers=2)


def test_streamed_audit_equals_the_in_memory_audit(audit, tmp_path, digits_imagefolder):
    """Every probe that reads images, through the CLI: --stream changes where the pixels come from, nothing else."""
    outs = {}
    for how in ("--stream", "--in-memory"):
        outs[how] = tmp_path / how.strip("-")
        r = audit(
            "run", "--data", digits_imagefolder, how, "--workers", "2", "--limit", "8", "--out", outs[how], *FAST,
            "--probes", "attacks,augment,gradcam",
        )  # fmt: skip
        assert r.code == 0, r
    streamed, kept = read_results(outs["--stream"]), read_results(outs["--in-memory"])
    assert streamed["data"]["streamed"] is True and "streamed" not in kept["data"]
    assert streamed["data"]["digest"] == kept["data"]["digest"]
    for name in ("attacks", "augment", "gradcam"):
        assert streamed["probes"][name]["status"] == "ok"
        assert streamed["probes"][name]["metrics"] == kept["probes"][name]["metrics"], name


def test_workers_must_not_be_negative(audit, tmp_path):
    r = audit("run", "--workers", "-1", "--out", tmp_path / "out")
    assert r.code == 2 and "--workers" in r.err
