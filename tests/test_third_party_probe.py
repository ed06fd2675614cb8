"""A probe from another package: installed through the `auditor.probes` entry point, with its own template
beside its module, placed in the report where its `report_order` says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the installed script in a subprocess, with the toy package on its path

TOY_MODULE = '''
"""A third-party probe, as another package would ship it."""

from dataclasses import dataclass

from auditor.probes.base import Probe
from auditor.results import Finding, ProbeResult


@dataclass(frozen=True)
class ToyView:
    shout: str
    images: int


class ToyProbe(Probe):
    name = "toy"
    description = "a toy probe from another package"
    tasks = ("classify", "detect", "segment")
    template = "toy_section.html.j2"  # package data, beside this module
    report_order = 55  # after the explanations (gradcam 40, actmax 50), before filters (60)

    @dataclass
    class Params:
        word: str = "marmalade"

        def __post_init__(self):
            if not self.word.isalpha():
                raise ValueError(f"word {self.word!r}: letters only")

    @classmethod
    def view(cls, details):
        return ToyView(shout=details["word"].upper(), images=details["images"])

    def run(self, ctx):
        n = len(ctx.data)
        return ProbeResult(
            status="ok",
            score=0.5,
            metrics={"images": float(n)},
            findings=(Finding("info", "the toy looked at every image"),),
            details={"word": self.params.word, "images": n},
        )
'''

TOY_TEMPLATE = """\
<p class="toy-only">Toy section says {{ s.view.shout }} after {{ s.view.images }} images.</p>
{% include "probes/_findings.html.j2" %}
"""


def _install_toy(site: Path) -> None:
    """The files pip would leave: the package (module and template) and its dist-info with the entry point."""
    package = site / "toyprobe"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(TOY_MODULE))
    (package / "toy_section.html.j2").write_text(TOY_TEMPLATE)
    info = site / "toyprobe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyprobe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[auditor.probes]\ntoy = toyprobe:ToyProbe\n")


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _audit(site: Path, *args) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("audit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())"]
    return subprocess.run(
        [*cmd, *map(str, args)], env=_env(site), capture_output=True, text=True, timeout=600, cwd=site
    )


def test_installed_probe_renders_its_own_template_in_its_place(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_toy(site)
    out = tmp_path / "out"
    # filters first on the command line: the report must still put toy (55) before filters (60)
    r = _audit(site, "run", "--model", "digits-cnn", "--probes", "filters,toy", "--limit", "20", "--set",
               "toy.word=quince", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert list(results["probes"]) == ["filters", "toy"]  # run order
    toy = results["probes"]["toy"]
    assert toy["status"] == "ok" and toy["details"] == {"word": "quince", "images": 20}

    html = (out / "report.html").read_text()
    assert "Toy section says QUINCE after 20 images." in html  # only its template, reading its view
    assert "the toy looked at every image" in html
    assert re.findall(r'<section class="card probe" id="probe-([\w-]+)"', html) == ["toy", "filters"]
    summary = (out / "summary.md").read_text()
    assert summary.index("| toy |") < summary.index("| filters |")

    # among all the built-ins: after the explanations, before filters
    order = subprocess.run(
        [sys.executable, "-c", "from auditor.headlines import section_order as o; "
         "print(','.join(o(['filters', 'toy', 'gradcam', 'actmax', 'attacks', 'augment', 'patch', 'gone'])))"],
        env=_env(site), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert order.stdout.split() == ["attacks,patch,augment,gradcam,actmax,toy,filters,gone"], order.stderr[-2000:]


def test_a_bad_value_for_its_parameter_stops_the_run_before_any_probe(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_toy(site)
    r = _audit(site, "run", "--probes", "filters,toy", "--set", "toy.word=b4d", "--out", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: toy: word 'b4d': letters only"]
    assert not (tmp_path / "out").exists()
