"""The README's GitHub Actions example stays true: valid YAML and TOML, commands and options that exist,
rules whose metrics a real run has."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import yaml

import cli
from auditor.gates import evaluate, parse_rule
from auditor.results import load

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(lang: str, first_line: str) -> str:
    for body in re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        if body.startswith(first_line):
            return body
    raise AssertionError(f"README has no ```{lang} block starting with {first_line!r}")


def _audit_commands(workflow: dict) -> list[list[str]]:
    commands = []
    for step in workflow["jobs"]["audit"]["steps"]:
        for line in step.get("run", "").splitlines():
            line = line.split(" >>")[0].split(" ||")[0].strip()
            if line.startswith("audit "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_workflow_runs_the_audit_keeps_the_report_and_fails_on_gates():
    workflow = yaml.safe_load(_block("yaml", "# .github/workflows/audit.yml"))
    steps = workflow["jobs"]["audit"]["steps"]
    audit = next(s for s in steps if s.get("id") == "audit")
    assert audit.get("continue-on-error") is True and "--gate" in audit["run"]
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "out/"
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") and "audit diff" in s["run"] for s in steps)
    assert steps[-1]["if"] == "steps.audit.outcome == 'failure'" and steps[-1]["run"] == "exit 1"


def test_workflow_commands_and_options_exist():
    workflow = yaml.safe_load(_block("yaml", "# .github/workflows/audit.yml"))
    commands = _audit_commands(workflow)
    assert [c[0] for c in commands] == ["run", "diff"]
    for args in commands:
        command = cli.cli.commands[args[0]]
        known = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        used = {a for a in args if a.startswith("--")}
        assert used <= known, (args[0], used - known)
        command.make_context(args[0], args[1:], resilient_parsing=False)  # parses as click would


@pytest.mark.slow
@pytest.mark.xdist_group("default_run")  # one default audit per worker that runs these
def test_gates_file_example_rules_name_real_metrics(default_run):
    gates = tomllib.loads(_block("toml", "# audit/gates.toml"))
    assert gates["baseline"] == "baseline/results.json"
    rules = [parse_rule(r) for r in gates["rules"]]
    results = load(default_run)
    # against itself nothing dropped, so every rule is judged on a value (an unknown metric would raise)
    judged = evaluate(rules, results, baseline=results)
    assert all(g.value is not None for g in judged), [g.message for g in judged if g.value is None]
    assert all(g.passed or g.warn for g in judged if "drop" in g.rule)
