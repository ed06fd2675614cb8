"""Probes: each module holds one; base.py holds the contract and the registry."""

from auditor.probes.base import Context, Probe, available_probes, parse_params

__all__ = ["Context", "Probe", "available_probes", "parse_params"]
