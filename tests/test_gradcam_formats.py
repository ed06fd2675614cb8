"""gradcam on the forms a model ships in: torch.export programs (.pt2) and TorchScript, beside the eager model.

The exported and converted forms must give the eager model's maps (Spearman >= 0.99 per row), graph nodes
can be named as layers, and a TorchScript model whose graph cannot be converted is explained from the input
with maps that beat a random one, while the report says which source ran and why.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from auditor.models import ModelSpec, load_model
from auditor.models.base import ModelFacts
from auditor.models.common import generic_adapter
from auditor.probes.gradcam import GradCamProbe
from auditor.probes.gradcam.maps import explain
from auditor.probes.gradcam.sanity import rank_correlation
from auditor.probes.gradcam.source import choose_source
from auditor.tasks import task_of
from tests.conftest import make_probe, probe_context


def as_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def saved_forms(net: torch.nn.Module, size: int, channels: int, folder) -> dict[str, str]:
    """The network as a .pt2 program (dynamic batch) and as a scripted TorchScript file."""
    net = net.eval()
    example = torch.rand(2, channels, size, size)
    pt2, ts = folder / "model.pt2", folder / "model.ts"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}}), str(pt2))
    torch.jit.script(net).save(str(ts))
    return {"pt2": str(pt2), "ts": str(ts)}


def load_form(path: str, like) -> torch.nn.Module:
    spec = ModelSpec(model=path, input_size=like.input_size, mean=like.mean_values, std=like.std_values)
    return load_model(spec).eval()


def grad_cam_maps(adapter, x: torch.Tensor, layer: tuple[str, ...] = ()):
    source = choose_source(adapter, "auto", layer)
    task = task_of(adapter)
    rows = task.explain_targets(adapter, x, None, 64, 32)
    return source, explain(source.adapter, task, source.modules(), x, rows, ("cam", "gradcam"), 32, lambda n: None)


@pytest.fixture(scope="module")
def digits_forms(digits_model, tmp_path_factory):
    paths = saved_forms(digits_model.net, 28, 1, tmp_path_factory.mktemp("forms"))
    return {name: load_form(path, digits_model) for name, path in paths.items()}


def test_exported_and_torchscript_digits_give_the_eager_maps(digits_model, digits_forms, digits_test):
    x = as_unit(digits_test[0][:12])
    eager_source, eager = grad_cam_maps(digits_model, x)
    assert eager_source.names == ["features"] and eager.cam
    for name, adapter in digits_forms.items():
        source, maps = grad_cam_maps(adapter, x)
        assert maps.cam, name  # the GAP + linear head is found in the graph too
        for method in ("cam", "gradcam"):
            rho = rank_correlation(eager.coarse[method], maps.coarse[method])
            assert float(rho.min()) >= 0.99, (name, method, rho)
    pt2_source, _ = grad_cam_maps(digits_forms["pt2"], x)
    assert pt2_source.names == ["features"] and pt2_source.why == "maps from layer features"
    ts_source, _ = grad_cam_maps(digits_forms["ts"], x)
    assert "TorchScript graph converted" in ts_source.why and ts_source.names == ["relu_2"]


def test_a_graph_node_can_be_named_as_the_layer(digits_model, digits_forms, digits_test):
    x = as_unit(digits_test[0][:6])
    _, eager = grad_cam_maps(digits_model, x)
    source, tapped = grad_cam_maps(digits_forms["pt2"], x, ("relu_2",))  # the last ReLU: the block's output
    assert source.names == ["relu_2"] and "graph node relu_2" in source.why
    torch.testing.assert_close(tapped.coarse["gradcam"], eager.coarse["gradcam"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no module or graph node relu_9.*did you mean"):
        choose_source(digits_forms["pt2"], "auto", ("relu_9",))


def test_torchscript_without_a_convertible_graph_is_explained_from_the_input(
    digits_model, digits_forms, digits_test, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "auditor.probes.gradcam.source.from_torchscript", lambda net, example: (None, "the converter failed (test)")
    )
    adapter = digits_forms["ts"]
    before = adapter(as_unit(digits_test[0][:4]))
    probe = make_probe(GradCamProbe, images=24, stages=2)
    result = probe.run(probe_context("gradcam", adapter, tmp_path, digits_test[0][:24], digits_test[1][:24]))
    m = result.metrics
    assert result.status == "ok" and result.details["methods"] == ["occlusion"]
    assert result.details["source"] == "maps from the input: TorchScript model, and the converter failed (test)"
    assert any("Occlusion (captum)" in f.text for f in result.findings)
    # faithful: better than chance on both curves
    assert m["deletion_auc"] < m["deletion_auc@random"] - 0.05
    assert m["insertion_auc"] > m["insertion_auc@random"] + 0.05
    # the sanity check reached the scripted weights (in definition order) and put them back
    assert len(result.details["stages"]) == 2 and result.details["stages"][0]["layers"] == "classifier"
    torch.testing.assert_close(adapter(as_unit(digits_test[0][:4])), before)
    with pytest.raises(ValueError, match="converter failed"):
        choose_source(adapter, "layer", ())


def test_resnet18_eager_exported_and_scripted_agree_and_the_probe_runs(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    spec = ModelSpec(model="resnet18", input_size=(64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    eager = generic_adapter(net, spec, facts=ModelFacts(name="resnet18", source="import"))
    forms = {name: load_form(path, eager) for name, path in saved_forms(net, 64, 3, tmp_path).items()}
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    source, reference = grad_cam_maps(eager, x)
    assert source.names == ["layer4"]
    for name, adapter in forms.items():
        _, maps = grad_cam_maps(adapter, x)
        rho = rank_correlation(reference.coarse["gradcam"], maps.coarse["gradcam"])
        assert float(rho.nan_to_num(1.0).min()) >= 0.99, (name, rho)
    images = (x * 255).round().to(torch.uint8)
    for adapter in (eager, *forms.values()):
        probe = make_probe(GradCamProbe, images=2, steps=3, stages=2, gallery=1)
        result = probe.run(probe_context("gradcam", adapter, tmp_path / "run", images, torch.tensor([0, 1, 2, 3])))
        assert result.status == "ok" and result.metrics["deletion_auc"] is not None


def test_without_reachable_weights_the_randomisation_check_says_it_did_not_run(
    digits_model, digits_test, tmp_path, monkeypatch
):
    monkeypatch.setattr("auditor.probes.gradcam.probe.learned_layers", lambda adapter, task: [])
    probe = make_probe(GradCamProbe, images=8, stages=2)
    result = probe.run(probe_context("gradcam", digits_model, tmp_path, digits_test[0][:8], digits_test[1][:8]))
    assert result.status == "ok" and result.metrics["randomization_similarity"] is None
    assert result.metrics["untrustworthy"] == 0.0 and result.details["stages"] == []
    assert any("randomisation check did not run" in f.text for f in result.findings)
    assert not (tmp_path / "gradcam" / "randomisation.png").exists()


@pytest.mark.slow
def test_a_planted_shortcut_is_flagged_in_every_form_the_model_ships_in(tmp_path):
    """The corner-mark net of tests/planted_shortcut.py, eager, exported and scripted (hooked through the converted
    graph, and explained from the input when it cannot be): the finding names the class and the corner each time."""
    from tests.planted_shortcut import MARK_CLASS, MARK_PLACE, adapter_of, planted

    p = planted(mark=True)
    pick = torch.cat(
        [torch.nonzero(p.labels == MARK_CLASS).flatten()[:10], torch.nonzero(p.labels != MARK_CLASS).flatten()[:30]]
    )
    images, labels = (p.images[pick] * 255).round().to(torch.uint8), p.labels[pick]
    paths = saved_forms(p.net, 28, 1, tmp_path)
    forms = {
        "eager": adapter_of(p.net),
        "pt2": load_model(ModelSpec(model=paths["pt2"], input_size=(28, 28))).eval(),
        "ts": load_model(ModelSpec(model=paths["ts"], input_size=(28, 28))).eval(),
        "ts-input": load_model(ModelSpec(model=paths["ts"], input_size=(28, 28))).eval(),
    }
    for name, adapter in forms.items():
        params = dict(images=40, steps=3, stages=1, methods="gradcam", faithful_rows=8)
        if name == "ts-input":
            params["source"] = "input"
        result = make_probe(GradCamProbe, **params).run(
            probe_context("gradcam", adapter, tmp_path / name, images, labels)
        )
        high = [f.text for f in result.findings if f.severity == "high" and "location shortcut" in f.text]
        assert result.metrics["shortcut_classes"] == 1.0 and len(high) == 1, (name, result.findings)
        assert f"class '{MARK_CLASS}'" in high[0] and MARK_PLACE in high[0], (name, high)
