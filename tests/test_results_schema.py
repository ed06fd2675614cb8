"""results.json: the schema accepts what the runner writes and rejects what it must not."""

from __future__ import annotations

import json

import pytest

from auditor.errors import AuditError
from auditor.results import ProbeResult, load, validate
from tests.test_gates import make_results


def test_roundtrip_validates(tmp_path):
    from auditor.results import save

    res = make_results()
    save(res, tmp_path / "results.json")
    d = json.loads((tmp_path / "results.json").read_text())
    validate(d)
    assert d["schema"] == "auditor.results/1" and d["score"] == pytest.approx(0.4)
    assert load(tmp_path).probes["attacks"].metrics == res.probes["attacks"].metrics


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("probes"),
        lambda d: d["probes"]["attacks"].update(status="done"),
        lambda d: d["probes"]["attacks"].update(score=1.5),
        lambda d: d["probes"]["attacks"]["metrics"].update(x="high"),
        lambda d: d["probes"]["attacks"].update(status="failed"),  # failed needs an error
        lambda d: d["probes"]["attacks"]["findings"].append({"severity": "fatal", "text": "x"}),
    ],
)
def test_schema_rejects(mutate):
    d = make_results().to_dict()
    mutate(d)
    with pytest.raises(AuditError):
        validate(d)


def test_probe_result_checks_its_invariants():
    with pytest.raises(ValueError):
        ProbeResult(status="ok", score=-0.1)
    with pytest.raises(ValueError):
        ProbeResult(status="maybe")


def test_nan_is_written_as_null(tmp_path):
    from auditor.results import save

    res = make_results()
    res.probes["attacks"].metrics["clean_accuracy"] = float("nan")
    save(res, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["probes"]["attacks"]["metrics"]["clean_accuracy"] is None
