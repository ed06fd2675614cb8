"""The `augment` probe: ImageNet-C corruptions, geometric and photometric shifts (see probe.py)."""

from auditor.probes.augment.probe import AugmentProbe

__all__ = ["AugmentProbe"]
