"""torch.export source (.pt2): the format PyTorch recommends. The program runs unflattened (auditor.models.graphs):
the original module hierarchy, with autograd and hooks, as fast as the flat graph."""

from __future__ import annotations

from pathlib import Path

import torch

from auditor.errors import AuditError, first_line
from auditor.files import sha256_of
from auditor.models.base import ModelAdapter, ModelFacts
from auditor.models.common import generic_adapter
from auditor.models.graphs import hierarchical


def load_exported(path: Path, spec) -> ModelAdapter:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise AuditError(f"--model {path}: not a loadable torch.export program: {first_line(exc)}") from exc
    net, why_flat = hierarchical(program)
    facts = ModelFacts(name=path.name, source="export", sha256=sha256_of(path), weights=str(path))
    if why_flat is not None:
        facts.notes.append(f"{why_flat}: gradcam can tap graph nodes only (gradcam.layer=NODE)")
    adapter = generic_adapter(net, spec, facts=facts)
    adapter.program = program
    try:
        with torch.no_grad():
            adapter(adapter.example_input(2))
    except Exception as exc:
        raise AuditError(
            f"--model {path}: the program does not accept a batch of 2 ({first_line(exc)}); export it "
            "with a dynamic batch dimension: dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
        ) from exc
    return adapter
