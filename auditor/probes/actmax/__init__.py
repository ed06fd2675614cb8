"""`actmax`: activation maximisation (see probe.py)."""

from auditor.probes.actmax.probe import ActMaxProbe

__all__ = ["ActMaxProbe"]
