"""Run configuration: `--config audit.toml`, then command-line options, then `--set`.

audit.toml may hold the run's options at the top level (model, data, limit, batch_size,
device, seed, out, gates, and `select`, the probes to run: TOML will not let `probes` be
both a list and the parent of the tables) and one table per probe: `[probes.attacks] steps = 40`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from auditor.errors import AuditError

RUN_KEYS = {
    "model",
    "data",
    "limit",
    "batch_size",
    "device",
    "seed",
    "out",
    "select",
    "gates",
    "task",
    "weights",
    "input_size",
    "mean",
    "std",
    "classes",
    "offline",
    "stream",
    "workers",
}


def read_toml(path: str | Path, label: str) -> dict[str, Any]:
    """A TOML document, or an AuditError that names the file (`label` says what it was for)."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"{label} {path}: no such file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{label} {path}: not valid TOML: {exc}") from exc


def load_config(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(run options, {probe: {param: value}}) from a TOML file."""
    doc = read_toml(path, "--config")
    probes = doc.pop("probes", {})
    unknown = set(doc) - RUN_KEYS
    if unknown:
        raise AuditError(
            f"--config {path}: unknown option(s) {', '.join(sorted(unknown))} "
            f"(valid: {', '.join(sorted(RUN_KEYS))}, and [probes.NAME] tables)"
        )
    if not isinstance(probes, dict) or not all(isinstance(v, dict) for v in probes.values()):
        raise AuditError(f"--config {path}: probe parameters go in tables, e.g. [probes.attacks]")
    return doc, probes


def apply_sets(params: dict[str, dict[str, Any]], sets: list[str]) -> dict[str, dict[str, Any]]:
    """`--set probe.key=value` over the config file's probe tables (values stay strings here)."""
    merged = {k: dict(v) for k, v in params.items()}
    for item in sets:
        key, eq, value = item.partition("=")
        probe, dot, name = key.strip().partition(".")
        if not eq or not dot or not probe or not name:
            raise AuditError(f"--set {item!r}: expected PROBE.KEY=VALUE, e.g. attacks.steps=40")
        merged.setdefault(probe, {})[name] = value.strip()
    return merged
