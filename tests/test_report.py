"""The HTML report: what a reviewer sees first, and a page that stays small whatever the probes draw."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from auditor.headlines import key_findings, section_order
from auditor.report import encode_images, render_report
from auditor.results import Finding, ProbeResult, Results

MAX_REPORT_BYTES = 15 * 2**20  # issue 7: a default run's report stays under 15 MB


def _results(probes: dict[str, ProbeResult]) -> Results:
    return Results(
        model={"name": "m", "task": "classify", "source": "zoo", "sha256": "ab" * 32, "parameters": 1234},
        data={"name": "d", "n": 10, "labelled": True},
        run={"device": "cpu", "seed": 0, "seconds": 1.0, "version": "0"},
        probes=probes,
    )


def _noise_png(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_key_findings_lead_with_failures_then_one_headline_per_probe():
    augment = ProbeResult(
        status="ok",
        score=0.4,
        findings=(
            Finding("high", "contrast breaks it", key=True),
            Finding("high", "fog breaks it"),
            Finding("high", "frost breaks it"),
            Finding("info", "scaled parameters"),
        ),
    )
    attacks = ProbeResult(
        status="ok",
        score=0.2,
        findings=(
            Finding("info", "median minimal eps 4/255", key=True),
            Finding("medium", "PGD at 2/255 halves it", key=True),
        ),
    )
    gradcam = ProbeResult(
        status="ok", findings=(Finding("info", "maps from layer x"), Finding("info", "beats a random map", key=True))
    )
    patch = ProbeResult(status="failed", error="RuntimeError: boom")
    results = _results({"augment": augment, "gradcam": gradcam, "patch": patch, "attacks": attacks})
    keys = key_findings(results, section_order(results.probes))
    texts = [k.text for k in keys]
    assert texts[0] == "the patch probe failed: RuntimeError: boom"
    # each probe's headline before any probe's second finding: the attack is not crowded out by corruptions
    assert texts[1:4] == ["contrast breaks it", "PGD at 2/255 halves it", "beats a random map"]
    assert texts[4] == "median minimal eps 4/255"  # then the other headlines, before non-key highs
    assert len(keys) == 5 and "maps from layer x" not in texts


def test_sections_put_robustness_first_and_unknown_probes_last():
    assert section_order(["actmax", "filters", "mine", "gradcam", "attacks", "augment", "patch"]) == [
        "attacks",
        "patch",
        "augment",
        "gradcam",
        "actmax",
        "filters",
        "mine",
    ]


def test_large_images_are_scaled_and_encoded_under_the_budget(tmp_path):
    paths = [_noise_png(tmp_path / f"n{i}.png", 2400, 1800, seed=i) for i in range(3)]  # ~13 MB each as PNG
    budget = 600_000
    uris = encode_images(paths, budget=budget)
    assert sum(len(u) for u in uris) <= budget
    for uri in uris:
        mime, data = re.match(r"data:(image/\w+);base64,(.*)", uri).groups()
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.width < 2400 and abs(im.width / im.height - 4 / 3) < 0.01  # aspect kept
        assert mime in ("image/png", "image/jpeg")
    small = _noise_png(tmp_path / "s.png", 40, 30)
    (uri,) = encode_images([small])
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.size == (40, 30) and im.format == "PNG"  # small figures stay lossless and untouched


def test_report_of_a_probe_with_huge_figures_stays_under_15_mb(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    rels = []
    for i in range(6):
        _noise_png(folder / f"gallery{i}.png", 2000, 2000, seed=i)  # 12 MB of noise pixels each: 72 MB in all
        rels.append(f"big/gallery{i}.png")
    results = _results(
        {
            "big": ProbeResult(
                status="ok", score=0.5, artifacts=tuple(rels), details={"captions": {rels[0]: "caption <b>0</b>"}}
            )
        }
    )
    path = render_report(results, tmp_path)
    html = path.read_text(encoding="utf-8")
    assert path.stat().st_size < MAX_REPORT_BYTES
    assert html.count('src="data:image/') == 6 and 'href="big/gallery0.png"' in html  # full size beside
    assert "caption &lt;b&gt;0&lt;/b&gt;" in html


@pytest.mark.slow
@pytest.mark.xdist_group("default_run")  # one default audit per worker that runs these
def test_default_run_report_is_self_contained_and_small(default_run):
    html = (default_run / "report.html").read_text(encoding="utf-8")
    assert (default_run / "report.html").stat().st_size < MAX_REPORT_BYTES
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from anywhere
    top = html[: html.index('id="probe-')]
    for part in (
        'id="scorecard"',
        'id="key-findings"',
        'id="model-card"',
        "APGD-T + Square at ε=",
        "sklearn-digits-test",
    ):
        assert part in top, part  # verdict, scorecard, model card and key findings come before any section
    assert html.index('id="probe-attacks"') < html.index('id="probe-gradcam"') < html.index('id="probe-filters"')


def test_summary_md_carries_the_key_findings_escaped():
    from auditor.gates import summary_md

    attacks = ProbeResult(
        status="ok",
        score=0.2,
        findings=(Finding("medium", "PGD turns class '<script>x' into '7'", key=True), Finding("info", "setup note")),
    )
    patch = ProbeResult(status="failed", error="RuntimeError: boom")
    md = summary_md(_results({"patch": patch, "attacks": attacks}))
    assert md.index("| attacks |") < md.index("| patch |")  # robustness order, as in the report
    assert "1. **medium** · attacks: PGD turns class '&lt;script&gt;x' into '7'" in md
    assert "setup note" not in md and md.count("boom") == 1  # a failure is listed once, not again as a finding
