"""auditor: audits PyTorch vision models for adversarial robustness and explainability."""

__version__ = "0.1.0"
