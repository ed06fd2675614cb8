"""TorchScript source (deprecated upstream in favour of torch.export, still common)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from auditor.errors import AuditError, first_line
from auditor.files import sha256_of
from auditor.models.base import ModelAdapter, ModelFacts
from auditor.models.common import generic_adapter


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code under <archive>/code/; plain torch.save files do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torchscript(path: Path, spec) -> ModelAdapter:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise AuditError(f"--model {path}: not a loadable TorchScript file: {first_line(exc)}") from exc
    facts = ModelFacts(name=path.name, source="torchscript", sha256=sha256_of(path), weights=str(path))
    return generic_adapter(net, spec, facts=facts)
