"""`gradcam`: where the model looks, and whether the maps deserve belief (see probe.py)."""

from auditor.probes.gradcam.probe import GradCamProbe

__all__ = ["GradCamProbe"]
