"""The filters probe: the first layer as a tile grid, and the dead and near-identical filters it names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auditor.models.base import ClassifierAdapter, ModelFacts, Preprocess
from auditor.probes.filters import DEAD_FRAME, DUPLICATE_FRAME, FiltersProbe
from tests.conftest import probe_context


def handmade(weight: torch.Tensor) -> ClassifierAdapter:
    """A classifier whose first (only) conv has exactly these weights."""
    out_c, in_c = weight.shape[:2]
    net = nn.Sequential(
        nn.Conv2d(in_c, out_c, weight.shape[-1]), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_c, 2)
    )
    with torch.no_grad():
        net[0].weight.copy_(weight)
    return ClassifierAdapter(
        net,
        facts=ModelFacts(name="t", source="import"),
        class_names=["a", "b"],
        input_size=(8, 8),
        channels=in_c,
        mean=(0.0,),
        std=(1.0,),
        preprocess=Preprocess(resize=8),
        epsilons=("0.1",),
    )


def run(adapter, tmp_path, **params):
    blank = torch.zeros(1, adapter.channels, *adapter.input_size)  # filters reads the weights, not the images
    ctx = probe_context("filters", adapter, tmp_path, blank, torch.zeros(1, dtype=torch.long))
    result = FiltersProbe(FiltersProbe.Params(**params)).run(ctx)
    with Image.open(tmp_path / result.artifacts[0]) as im:
        return result, np.asarray(im.convert("RGB")).astype(int)


def has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((pixels == rgb).all(axis=-1).any())


@pytest.fixture
def planted():
    """8 random RGB 3x3 filters, then: 5 a copy of 2, 6 the negative of 1, 4 zero."""
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    w[5], w[6], w[4] = w[2], -w[1], 0
    return w


def test_dead_duplicate_and_opposite_filters_found_and_framed(planted, tmp_path):
    result, pixels = run(handmade(planted), tmp_path)
    m = result.metrics
    assert m == {"filters": 8, "dead_filters": 1, "duplicate_filters": 2, "duplicate_pairs": 1, "opposite_pairs": 1}
    texts = {f.severity: [] for f in result.findings}
    for f in result.findings:
        texts[f.severity].append(f.text)
    assert any("1 of 8 filters dead" in t and t.endswith(": 4") for t in texts["medium"])
    assert any("filters 2 and 5 (1.00)" in t for t in texts["medium"])
    assert any("sign-flipped" in t and "filters 1 and 6 (-1.00)" in t for t in texts["info"])
    rows = result.details["flagged"]
    assert [(r["filter"], r["issue"], r["partner"]) for r in rows] == [(4, "dead", None), (2, "duplicate", 5)]
    assert has_colour(pixels, DEAD_FRAME) and has_colour(pixels, DUPLICATE_FRAME)


def test_checks_cover_all_filters_when_fewer_are_shown(planted, tmp_path):
    result, pixels = run(handmade(planted), tmp_path, max_filters=4)  # shows 0..3: filter 2 but not its copy, 5
    assert (
        result.details["shown"] == 4 and result.metrics["duplicate_pairs"] == 1 and result.metrics["dead_filters"] == 1
    )
    assert has_colour(pixels, DUPLICATE_FRAME) and not has_colour(pixels, DEAD_FRAME)
    assert "4 of 8" in result.details["captions"][result.artifacts[0]]


def test_rgb_filters_in_colour_and_single_channel_in_grey(tmp_path):
    rgb_dir, grey_dir = tmp_path / "rgb", tmp_path / "grey"
    weights = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    result, pixels = run(handmade(weights), rgb_dir)
    assert result.metrics["dead_filters"] == 0 and result.metrics["duplicate_pairs"] == 0  # so no coloured frames
    assert (np.ptp(pixels, axis=-1) > 30).any()  # tiles in colour
    _, pixels = run(handmade(weights[:, :1]), grey_dir)
    assert (np.ptp(pixels, axis=-1) == 0).all()  # tiles and labels all grey


def test_filters_grid_of_first_conv(digits_model, tmp_path):
    """The zoo's digits-cnn: 32 grey 3x3 filters, none dead, none near-identical."""
    result, pixels = run(digits_model, tmp_path)
    assert result.metrics["filters"] == 32 and result.details["shape"] == [32, 1, 3, 3]
    assert result.metrics["dead_filters"] == 0 and result.metrics["duplicate_pairs"] == 0
    assert pixels.shape[1] >= 6 * 30 and pixels.shape[0] >= 6 * 30  # 32 tiles, each upscaled to at least 30 px
