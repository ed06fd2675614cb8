"""`audit`: the command line. Thin: parses, calls auditor, maps outcomes to exit codes.

Exit codes: 0 all good; 1 a gate failed; 2 usage or input error (one line, no
traceback); 3 a probe failed and no gate decided.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

import click
from tqdm import tqdm

from auditor import distributed
from auditor.compare import diff_results, render_md, render_plain, write_compare
from auditor.config import apply_sets, load_config
from auditor.errors import AuditError, did_you_mean
from auditor.files import write_text_atomic
from auditor.gates import check_rules_apply, evaluate, exit_code, junit_xml, parse_gates, summary_md, verdict
from auditor.models import ModelSpec
from auditor.models.catalogue import downloadables
from auditor.models.zoo import audit_defaults, zoo_entries, zoo_entry, zoo_names
from auditor.probes import available_probes
from auditor.report import fmt, render_report
from auditor.results import load
from auditor.runner import Interrupted, RunConfig, run_audit, write_outputs
from auditor.spread import render_spread, spread_rows

EXIT_USAGE = 2
DEFAULT_MODEL = "digits-cnn"


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise AuditError(f"{option} {text}: expected comma-separated numbers, e.g. 0.485,0.456,0.406") from exc
    if not values:
        raise AuditError(f"{option}: expected at least one number")
    return values


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = str(text).lower().replace("x", ",").split(",")
    try:
        dims = [int(p) for p in parts if p.strip()]
    except ValueError as exc:
        raise AuditError(f"--input-size {text}: expected N or HxW, e.g. 224 or 224x224") from exc
    if len(dims) not in (1, 2) or min(dims) < 1:
        raise AuditError(f"--input-size {text}: expected N or HxW, e.g. 224 or 224x224")
    return (dims[0], dims[-1])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="auditor", prog_name="audit")
def cli():
    """Audit PyTorch vision models: how they break and what they look at."""


@cli.command()
@click.option(
    "--model",
    help="zoo name, torchvision name, ultralytics name/.pt/.yaml, .ts/.pt2 file or "
    f"package.module:callable [default: {DEFAULT_MODEL}]",
)
@click.option(
    "--data",
    type=click.Path(),
    help="classify: class sub-folders or a flat folder; segment: images/ + "
    "masks/; detect: ultralytics data.yaml or images/ + labels/ [default: the zoo model's own set]",
)
@click.option(
    "--task", type=click.Choice(["classify", "detect", "segment"]), help="what the model does, where it cannot say"
)
@click.option("--weights", type=click.Path(), help="state dict for the architecture (loaded with weights_only)")
@click.option(
    "--trust-model",
    is_flag=True,
    default=None,
    help="allow pickled code in --weights or an ultralytics .pt (only for files you trust)",
)
@click.option("--input-size", help="model input, N or HxW, where the model cannot say")
@click.option("--mean", help="normalisation mean, comma-separated, where the model cannot say")
@click.option("--std", help="normalisation std, comma-separated, where the model cannot say")
@click.option("--classes", type=click.Path(), help="file with one class name per line, in output order")
@click.option("--limit", type=int, help="audit a seeded random subset of N images")
@click.option("--batch-size", type=int, help="images per forward/backward [default: 64, or the zoo model's own]")
@click.option(
    "--stream/--in-memory",
    default=None,
    help="decode the images from their files for every batch, or keep them decoded in memory [default: in memory "
    "when they fit 1 GiB]",
)
@click.option("--workers", type=int, help="DataLoader workers that decode the files [default: half the cores, 1-4]")
@click.option("--device", help="auto, cpu, cuda or cuda:N [default: auto]")
@click.option("--seed", type=int, help="seed for every random draw [default: 0]")
@click.option("--out", type=click.Path(), help="output folder [default: out]")
@click.option("--probes", "probe_names", help="comma-separated probe names, or all [default: all]")
@click.option("--config", "config_file", type=click.Path(), help="audit.toml with run options and [probes.NAME] tables")
@click.option("--set", "sets", multiple=True, help="probe parameter, PROBE.KEY=VALUE (repeatable)")
@click.option("--gate", "gates", multiple=True, help="rule like 'attacks.score >= 0.5', or a rules .toml (repeatable)")
@click.option(
    "--baseline",
    type=click.Path(),
    help="results.json that `drop` gates compare with [default: the `baseline` a gates file names]",
)
@click.option("--offline", is_flag=True, default=None, help="never download: fail at once if weights are not cached")
@click.option("--resume", is_flag=True, help="reuse probes already finished in --out by an interrupted run")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="run N times with seeds SEED..SEED+N-1 (each in OUT/seed-S; --limit keeps SEED's subset) and write the "
    "spread of every metric (OUT/spread.md): how much each moves with the seed, before choosing gates",
)
def run(repeat, **opts):
    """Run the probes on a model and write report.html, results.json, junit.xml and summary.md."""
    config = run_config(opts)
    if repeat > 1:
        return _repeat(config, repeat)
    try:
        results = run_audit(config)
    except Interrupted as stop:
        if distributed.is_main():
            paths = write_outputs(stop.results, config.out)
            click.echo(
                f"interrupted: {stop.results.run['partial']}; report of the finished probes: {paths['report']}",
                err=True,
            )
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(f"interrupted before any probe finished; rerun with --resume (output folder {config.out})", err=True)
        sys.exit(130)
    if distributed.is_main():  # a sharded run's other ranks hold the same results and write nothing
        paths = write_outputs(results, config.out)
        _print_summary(results, paths)
    return exit_code(results)


def _repeat(config: RunConfig, times: int) -> int:
    """The audit at `times` seeds, each in its own folder, then the spread table; exit: the worst run's."""
    runs, codes = [], []
    for seed in range(config.seed, config.seed + times):
        folder = config.out / f"seed-{seed}"
        results = run_audit(dataclasses.replace(config, seed=seed, out=folder, data_seed=config.seed))  # same images
        runs.append(results)
        codes.append(exit_code(results))
        if distributed.is_main():
            write_outputs(results, folder)
            click.echo(f"seed {seed}: score {fmt(results.score)} · {verdict(results)} ({folder})")
    if not distributed.is_main():
        return max(codes, key=lambda c: (c != 0, c))
    click.echo(render_spread(spread_rows(runs), runs))
    path = config.out / "spread.md"
    write_text_atomic(path, render_spread(spread_rows(runs, "*"), runs, "md"))
    click.echo(f"every metric's spread: {path}")
    return max(codes, key=lambda c: (c != 0, c))


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--metrics",
    help="fnmatch patterns over PROBE.METRIC, comma-separated [default: score,*.score]; '*' for every metric",
)
@click.option("--format", "style", type=click.Choice(["plain", "md"]), default="plain", show_default=True)
def spread(runs, metrics, style):
    """How much each metric moves over runs of one audit (other seeds, devices): results.json files or folders."""
    loaded = [load(r) for r in runs]
    click.echo(render_spread(spread_rows(loaded, metrics), loaded, style), nl=False)
    return 0


def run_config(opts: dict) -> RunConfig:
    """The run's options: the command line over --config's, --set over its probe tables."""
    file_opts, params = load_config(opts["config_file"]) if opts["config_file"] else ({}, {})

    def opt(name, default=None):
        value = opts.get(name)
        return value if value is not None else file_opts.get(name, default)

    probes = opt("probe_names") or file_opts.get("select")
    if isinstance(probes, str):
        probes = [p.strip() for p in probes.split(",") if p.strip()]
    size = opt("input_size")
    spec = ModelSpec(
        model=opt("model", DEFAULT_MODEL),
        weights=opt("weights"),
        task=opt("task"),
        input_size=_size(str(size) if isinstance(size, int) else size),
        mean=_floats(opt("mean"), "--mean"),
        std=_floats(opt("std"), "--std"),
        classes_file=opt("classes"),
        trust_model=bool(opt("trust_model", False)),
        offline=bool(opt("offline", False)),
    )
    gates = parse_gates(list(file_opts.get("gates", [])) + list(opts["gates"]), baseline=opts["baseline"])
    # A zoo model's own audit settings sit beneath everything the user gives
    zoo_batch, zoo_params = audit_defaults(spec.model)
    params = {name: {**zoo_params.get(name, {}), **params.get(name, {})} for name in zoo_params.keys() | params.keys()}
    return RunConfig(
        model=spec,
        data=opt("data"),
        limit=opt("limit"),
        batch_size=opt("batch_size", zoo_batch or 64),
        device=opt("device", "auto"),
        stream=opt("stream"),
        workers=opt("workers"),
        seed=opt("seed", 0),
        out=Path(opt("out", "out")),
        probes=probes,
        params=apply_sets(params, list(opts["sets"])),
        gates=gates.rules,
        baseline=gates.load_baseline(),  # a missing or broken one fails now, naming the file that named it
        progress=sys.stderr.isatty(),
        resume=opts["resume"],
    )


def _print_summary(results, paths) -> None:
    d = results.data
    click.echo(
        f"{results.model['name']} on {d['name']} ({d['n']} images{'' if d['labelled'] else ', label-free'}), "
        f"{results.run['device']}, {results.run['seconds']:.1f} s"
    )
    for name, p in results.probes.items():
        unmeasured = "nothing measured" if p.score is None else "not meaningful"
        extra = p.error or p.reason or (f"{unmeasured} (see findings)" if p.unmeasured else "")
        click.echo(f"  {name:<10} {p.status:<8} score {fmt(p.score):>6}  {p.seconds:6.1f} s  {extra}".rstrip())
    for f in results.findings:  # the run's own: nothing to measure, constant predictions
        click.echo(f"  {f.severity}: {f.text}")
    for g in results.gates:
        mark = "pass" if g.passed else ("warn" if g.warn else "FAIL")
        click.echo(f"  gate {mark}: {g.rule.removeprefix('warn:').strip()}  ({g.message})")
    click.echo(f"score {fmt(results.score)} · {verdict(results)}")
    click.echo(f"report: {paths['report']}")
    click.echo(f"results: {paths['results']}")


@cli.command()
@click.argument("results_path", type=click.Path())
@click.option("--rules", type=click.Path(), help="TOML file with a `rules` list (and optionally a `baseline`)")
@click.option("--gate", "gates", multiple=True, help="rule like 'attacks.score >= 0.5', or a rules .toml (repeatable)")
@click.option(
    "--baseline",
    type=click.Path(),
    help="results.json that `drop` rules compare with [default: the `baseline` a gates file names]",
)
@click.option("--out", type=click.Path(), help="where junit.xml and summary.md go [default: beside the results]")
def gate(results_path, rules, gates, baseline, out):
    """Check saved results against rules; exit 1 when a rule fails."""
    spec = parse_gates(list(gates), [rules] if rules else None, baseline)
    parsed = spec.rules
    if not parsed:
        raise AuditError("audit gate: no rules; pass --rules gates.toml or --gate 'attacks.score >= 0.5'")
    results = load(results_path)
    base = spec.load_baseline()
    check_rules_apply(parsed, list(results.probes), base)
    results = results.with_gates(evaluate(parsed, results, base))
    folder = Path(out) if out else (Path(results_path) if Path(results_path).is_dir() else Path(results_path).parent)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "junit.xml", junit_xml(results))
    write_text_atomic(folder / "summary.md", summary_md(results))
    for f in results.findings:  # the run's own: nothing to measure, constant predictions
        click.echo(f"  {f.severity}: {f.text}")
    for g in results.gates:
        mark = "pass" if g.passed else ("warn" if g.warn else "FAIL")
        click.echo(f"{mark}: {g.rule.removeprefix('warn:').strip()}  ({g.message})")
    return exit_code(results)


@cli.command()
@click.argument("out", type=click.Path())
def report(out):
    """Re-render report.html from a saved results.json and its artifacts."""
    folder = Path(out)
    results = load(folder)
    click.echo(f"report: {render_report(results, folder if folder.is_dir() else folder.parent)}")
    return 0


@cli.command()
@click.argument("base", type=click.Path())
@click.argument("new", type=click.Path())
@click.option(
    "--max-drop",
    type=float,
    default=0.02,
    show_default=True,
    help="how much worse (by each metric's direction) a gated metric may get before exit 1",
)
@click.option(
    "--metrics",
    help="the gated metrics: comma-separated fnmatch patterns over PROBE.METRIC "
    "(the run's score is `score`), e.g. 'attacks.*,*.score' [default: score,*.score]",
)
@click.option(
    "--format",
    "style",
    type=click.Choice(["plain", "md"]),
    default="plain",
    show_default=True,
    help="plain for a terminal, md for a CI job summary",
)
@click.option(
    "--out", type=click.Path(), help="write the table to this file instead of stdout (the verdict still prints)"
)
@click.option(
    "--significant",
    is_flag=True,
    help="a gated metric fails only when it got worse by more than --max-drop AND the change is beyond noise "
    "(a paired test where the runs share their images, else their 95%% intervals)",
)
def diff(base, new, max_drop, metrics, style, out, significant):
    """Compare two results.json (or output folders) metric by metric; exit 1 when a gated metric got worse.

    Each change is marked within or beyond noise: McNemar's test or a paired bootstrap where the two runs
    audited the same images, else the two runs' 95% intervals."""
    result = diff_results(
        load(base), load(new), max_drop=max_drop, metrics=metrics, labels=(str(base), str(new)), significant=significant
    )
    text = render_md(result) if style == "md" else render_plain(result)
    if out:
        write_text_atomic(out, text)
        click.echo(f"{result.verdict}\ndiff: {out}")
    else:
        click.echo(text, nl=False)
    return result.exit_code


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), default="compare.html", show_default=True, help="the HTML page to write")
def compare(results, out):
    """Models side by side in one HTML page: scores, then every metric, the better value marked."""
    if len(results) < 2:
        raise AuditError("audit compare: give two or more results.json files (or output folders)")
    runs = [load(path) for path in results]
    click.echo(f"compare: {write_compare(list(results), runs, out)}")
    return 0


@cli.group()
def zoo():
    """The model zoo: trained models that ship with auditor."""


@zoo.command("list")
def zoo_list():
    """One line per model `--model` takes by name: the zoo's, then the seed's downloadable ones."""
    rows = [("name", "task", "source", "offline", "size", "metric", "description")]
    for e in zoo_entries():
        size = f"{e.checkpoint_path.stat().st_size / 1e6:.1f} MB" if e.checkpoint_path.is_file() else "missing"
        metric = "held-out " + ", ".join(f"{k} {v:.4f}" for k, v in e.metrics.items())
        rows.append((e.name, e.task, "zoo", "yes" if e.available else "no", size, metric, e.description))
    for d in downloadables():
        offline = "cached" if d.cached else "no"
        rows.append((d.name, d.task, d.source, offline, f"{d.size_mb:.1f} MB", d.metric, d.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    click.echo(
        "\noffline no: the first `audit run --model NAME` downloads the weights (torchvision: into TORCH_HOME; "
        "ultralytics: its weights folder); --model also takes any other torchvision or ultralytics name"
    )
    return 0


def _zoo_entry(verb: str, name: str):
    entry = zoo_entry(name)
    if entry is None:
        names = zoo_names()
        raise AuditError(
            f"zoo {verb} {name}: no such zoo model{did_you_mean(name, names)} (available: {', '.join(names)})"
        )
    return entry


@zoo.command("info")
@click.argument("name")
def zoo_info(name):
    """Everything the registry knows about one model."""
    e = _zoo_entry("info", name)
    rows = [
        ("name", e.name),
        ("task", e.task),
        ("description", e.description),
        ("input", f"{e.channels}x{e.input_size[0]}x{e.input_size[1]}"),
        ("mean / std", f"{e.mean} / {e.std}"),
        ("classes", ", ".join(e.categories)),
        ("checkpoint", str(e.checkpoint_path)),
        ("sha256", e.sha256),
        ("evaluation set", e.eval_set),
        ("held-out metrics", ", ".join(f"{k} {v}" for k, v in e.metrics.items())),
        ("attack grid (L-inf)", ", ".join(e.epsilons)),
        ("default audit", _audit_settings(e)),
        ("recipe", "; ".join(f"{k}={v}" for k, v in e.recipe.items())),
        ("retrain", f"audit zoo train {e.name}"),
    ]
    for k, v in rows:
        click.echo(f"{k:>20}: {v}")
    return 0


def _audit_settings(e) -> str:
    images = f"{e.eval_limit} images (seeded)" if e.eval_limit else "every image"
    batch = f"batch {e.audit.get('batch_size', 64)}"
    params = [f"{probe}.{k}={v}" for probe, p in e.audit.get("probes", {}).items() for k, v in p.items()]
    return "; ".join([images, batch, *params])


@zoo.command("train")
@click.argument("name")
@click.option("--out", type=click.Path(), help="checkpoint path [default: ./NAME.pt]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--backbone",
    help="transfer-learning recipes (shapes-lite0): a torchvision classifier to fine-tune instead, its ImageNet "
    "weights downloaded once into TORCH_HOME [default: efficientnet-lite0, from a pinned package, offline]",
)
@click.option("--offline", is_flag=True, help="never download a --backbone's weights; exit 2 if they are not cached")
def zoo_train(name, out, seed, backbone, offline):
    """Train a zoo model with its own recipe and print its hash and held-out metric."""
    e = _zoo_entry("train", name)
    accepted = inspect.signature(e.train).parameters
    if backbone is not None and "backbone" not in accepted:
        raise AuditError(f"zoo train {name}: --backbone is for the transfer-learning recipes (shapes-lite0)")
    # every other recipe trains on what the project ships or generates: offline already
    options = {"backbone": backbone} if backbone is not None else {}
    if offline and "offline" in accepted:
        options["offline"] = True
    path = Path(out or f"{name}.pt")
    progress = lambda n: tqdm(total=n, desc="epochs", disable=not sys.stderr.isatty())  # noqa: E731
    report = e.train(path, seed=seed, progress=progress, **options)
    for k, v in report.items():
        click.echo(f"{k}: {v}")
    if backbone is None:  # another backbone is another model: the registry's figures are not its own
        for key, registered in e.metrics.items():
            if key in report:
                click.echo(f"registry {key}: {registered} (difference {report[key] - registered:+.4f})")
    return 0


@cli.group()
def probes():
    """The probes that can run."""


@probes.command("list")
def probes_list():
    """One line per probe: name, tasks, description."""
    for name, cls in available_probes().items():
        click.echo(f"{name:<10} {','.join(cls.tasks):<25} {cls.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="audit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
