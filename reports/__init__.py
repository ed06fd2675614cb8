"""Report templates (jinja2), loaded as package data by auditor.report."""
