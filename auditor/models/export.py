"""torch.export source (.pt2): the format PyTorch recommends; `.module()` runs with autograd."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from auditor.errors import AuditError, first_line
from auditor.files import sha256_of
from auditor.models.base import ModelAdapter, ModelFacts
from auditor.models.common import generic_adapter


class _Exported(nn.Module):
    """Exported graphs refuse train()/eval(); they were exported in the mode they run in."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True):
        return self

    def forward(self, x):
        return self.graph(x)


def load_exported(path: Path, spec) -> ModelAdapter:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise AuditError(f"--model {path}: not a loadable torch.export program: {first_line(exc)}") from exc
    net = _Exported(program.module())
    facts = ModelFacts(name=path.name, source="export", sha256=sha256_of(path), weights=str(path))
    adapter = generic_adapter(net, spec, facts=facts)
    try:
        with torch.no_grad():
            adapter(adapter.example_input(2))
    except Exception as exc:
        raise AuditError(
            f"--model {path}: the program does not accept a batch of 2 ({first_line(exc)}); export it "
            "with a dynamic batch dimension: dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
        ) from exc
    return adapter
