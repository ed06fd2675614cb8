"""`package.module:callable` source: the callable returns an nn.Module or a ready ModelAdapter."""

from __future__ import annotations

import importlib
import os
import sys

from torch import nn

from auditor.errors import AuditError, first_line
from auditor.files import sha256_of
from auditor.models.base import ModelAdapter, ModelFacts
from auditor.models.common import apply_state_dict, generic_adapter, load_state_dict


def load_import_path(target: str, spec) -> ModelAdapter:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise AuditError(f"--model {target}: expected package.module:callable")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # users run the audit from their project's folder
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:
        raise AuditError(f"--model {target}: cannot import {module_name}: {first_line(exc)}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AuditError(f"--model {target}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    try:
        net = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    except Exception as exc:
        raise AuditError(f"--model {target}: calling {attr}() failed: {first_line(exc)}") from exc
    if isinstance(net, ModelAdapter):
        return net
    if not isinstance(net, nn.Module):
        raise AuditError(f"--model {target}: {attr} gave a {type(net).__name__}, expected a torch.nn.Module")
    facts = ModelFacts(name=target, source="import")
    if spec.weights is not None:
        apply_state_dict(net, load_state_dict(spec.weights, spec.trust_model), spec.weights)
        facts.weights, facts.sha256 = spec.weights, sha256_of(spec.weights)
    return generic_adapter(net, spec, facts=facts)
