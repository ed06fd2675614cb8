"""Builds the context and runs the probes: each one timed, isolated and saved as it finishes.

A probe that raises is recorded as failed and the others still run. Each finished probe
is written to <out>/.partial/ at once, so `--resume` after a crash repeats only what was
unfinished (a saved probe is reused only when model, data, seed and its params match).
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import auditor
from auditor import distributed
from auditor.data import EvalData, load_data
from auditor.degenerate import inspect
from auditor.errors import AuditError, did_you_mean, first_line
from auditor.files import write_text_atomic
from auditor.gates import Rule, check_rules_apply, evaluate, junit_xml, summary_md
from auditor.models import ModelAdapter, ModelSpec, load_model
from auditor.probes.base import Context, Probe, Skip, available_probes, parse_params
from auditor.report import render_report
from auditor.results import Finding, ProbeResult, Results, save, write_json
from auditor.tasks import task_of


@dataclass
class RunConfig:
    model: ModelSpec
    data: str | None = None
    limit: int | None = None
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    out: Path = Path("out")
    probes: list[str] | None = None  # None: all
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: list[Rule] = field(default_factory=list)
    baseline: Results | None = None  # what `drop` gates compare with, loaded by the caller
    progress: bool = False
    resume: bool = False
    data_seed: int | None = None  # the seed of the --limit subset when it is not `seed` (--repeat keeps one subset)
    stream: bool | None = None  # None: keep decoded images in memory when they fit (auditor/loading.py)
    workers: int | None = None  # DataLoader workers that decode files; None: half the cores, 1 to 4


def make_progress(enabled: bool):
    # A terminal that reports a 0 x 0 size (a bare pty, some CI runners) makes tqdm hide every bar.
    size = shutil.get_terminal_size((100, 20))
    width, height = min(size.columns, 120), max(size.lines, 2)

    def progress(total: int, desc: str):
        return tqdm(
            total=total, desc=f"{desc:>14}", disable=not enabled, file=sys.stderr, leave=True, ncols=width, nrows=height
        )

    return progress


def resolve_device(text: str) -> torch.device:
    text = (text or "auto").strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise AuditError(f"--device {text}: expected auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AuditError(f"--device {text}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AuditError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise AuditError(f"--device {text}: expected auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_probes(requested: list[str] | None, registry: dict[str, type[Probe]]) -> list[str]:
    if not requested or requested == ["all"]:
        return list(registry)
    unknown = [n for n in requested if n not in registry]
    if unknown:
        raise AuditError(
            f"--probes: unknown probe(s) {', '.join(unknown)}{did_you_mean(unknown[0], registry)} "
            f"(available: {', '.join(registry)})"
        )
    return list(dict.fromkeys(requested))


class Interrupted(Exception):
    """Ctrl-C during the probes: `results` holds the finished ones, marked partial (run.partial)."""

    def __init__(self, results: Results):
        super().__init__(results.run.get("partial", "interrupted"))
        self.results = results


def run_audit(config: RunConfig) -> Results:
    started = time.perf_counter()
    registry = available_probes()
    names = select_probes(config.probes, registry)
    params = parse_all_params(config.params, names, registry)
    check_rules_apply(config.gates, names, config.baseline)
    if config.batch_size < 1:
        raise AuditError("--batch-size must be at least 1")
    if config.limit is not None and config.limit < 1:
        raise AuditError("--limit must be at least 1")
    if config.workers is not None and config.workers < 0:
        raise AuditError("--workers must be 0 (decode in the audit's own process) or more")
    device = distributed.start(resolve_device(config.device))  # under torchrun: join the group, cuda:LOCAL_RANK
    progress = make_progress(config.progress and distributed.is_main())

    seed_everything(config.seed)
    adapter = load_model(config.model).to(device).eval().prefer_channels_last()
    data = load_data(
        adapter,
        config.data,
        limit=config.limit,
        seed=config.seed if config.data_seed is None else config.data_seed,
        progress=progress,
        stream=config.stream,
        workers=config.workers,
    )
    check_model_output(adapter, data, device)
    probes = {name: registry[name](params[name]) for name in names}
    check_probes(probes, adapter)
    checked = inspect(adapter, data, task_of(adapter), config.batch_size, device)

    def context(name: str) -> Context:
        return Context(
            adapter=adapter,
            data=data,
            device=device,
            seed=config.seed,
            batch_size=config.batch_size,
            out_dir=Path(config.out),
            probe_name=name,
            progress=progress,
            probes=tuple(names),
            checked=checked,
        )

    results, interrupted = _run_probes(config, probes, params, context)
    facts = _facts(config, adapter, data, device, results, started)
    if interrupted is not None:
        left = names[names.index(interrupted) :]
        facts["run"]["partial"] = (
            f"interrupted (Ctrl-C) during {interrupted}; not run: {', '.join(left)}; rerun with --resume to finish"
        )
        # gates are not judged on a partial run: a missing probe would read as a failure
        raise Interrupted(Results(**facts, probes=results, findings=tuple(checked.findings())))
    res = Results(**facts, probes=results, findings=tuple(checked.findings()))
    return res.with_gates(evaluate(config.gates, res, config.baseline))


def parse_all_params(given: dict[str, dict[str, Any]], names: list[str], registry: dict[str, type[Probe]]) -> dict:
    """Each selected probe's Params (defaults, then --config, then --set), and a check of the parameters given
    for probes not selected: a bad value or an unknown key is a usage error before anything runs."""
    stray = set(given) - set(registry)
    if stray:
        first = sorted(stray)[0]
        raise AuditError(
            f"parameters for unknown probe(s) {', '.join(sorted(stray))}{did_you_mean(first, registry)} "
            f"(available: {', '.join(registry)})"
        )
    params = {n: parse_params(registry[n], given.get(n, {})) for n in names}
    for name in sorted(given.keys() - set(names)):
        parse_params(registry[name], given[name])
    return params


def check_probes(probes: dict[str, Probe], adapter: ModelAdapter) -> None:
    """Every probe that will run checks its parameters against the model (a layer name) before the first runs."""
    for name, probe in probes.items():
        if probe.skip_reason(adapter) is None:
            try:
                probe.check(adapter)
            except ValueError as exc:  # a usage error: nothing has run yet
                raise AuditError(f"{name}: {first_line(exc)}") from None


def _run_probes(config: RunConfig, probes: dict[str, Probe], params: dict, context) -> tuple[dict, str | None]:
    """(results by probe, the probe Ctrl-C stopped or None); each finished probe is saved for --resume at once.

    Sharded (auditor.distributed): rank 0 alone reads and writes out/, and tells the other ranks which probes
    --resume reuses, so that every rank runs the same probes."""
    out = Path(config.out)
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    results: dict[str, ProbeResult] = {}
    for name, probe in probes.items():
        fingerprint = _fingerprint(config, name, params[name])
        saved = _load_partial(out, name, fingerprint) if config.resume and main else None
        if config.resume:
            saved = distributed.broadcast(saved)
        if saved is not None:
            results[name] = saved
            continue
        try:
            results[name] = run_probe(probe, context(name))
        except KeyboardInterrupt:
            return results, name
        if main:
            partial = {"fingerprint": fingerprint, "result": results[name].to_dict()}
            write_json(out / ".partial" / f"{name}.json", partial)
    return results, None


def _facts(config: RunConfig, adapter: ModelAdapter, data: EvalData, device, results: dict, started: float) -> dict:
    """results.json's model, data and run sections."""
    facts = {**asdict(adapter.facts), **adapter.describe(), "name": adapter.facts.name}
    model_facts = {
        "name": facts.pop("name"),
        "task": adapter.task,
        "source": facts.pop("source"),
        "sha256": facts.pop("sha256"),
        **facts,
    }
    run_facts = {
        "device": _device_name(device),
        "seed": config.seed,
        "seconds": round(time.perf_counter() - started, 2),
        "version": auditor.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "batch_size": config.batch_size,
        "peak_memory_gib": _peak_rss_gib(),
        **({"ranks": distributed.size()} if distributed.active() else {}),
        **({"limit_seed": config.data_seed} if config.data_seed is not None else {}),
    }
    if device.type == "cuda":
        peaks = [p.details.get("gpu_peak_gib", 0.0) for p in results.values()]
        run_facts["gpu_peak_memory_gib"] = max(peaks, default=0.0)
    data_facts = {**data.facts(), **({"path": str(config.data)} if config.data else {})}
    return {"model": model_facts, "data": data_facts, "run": run_facts}


def run_probe(probe: Probe, ctx: Context) -> ProbeResult:
    reason = probe.skip_reason(ctx.adapter)
    if reason is not None:
        return ProbeResult(status="skipped", reason=reason)
    start = time.perf_counter()
    first_batch = ctx.batch_size
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    while True:
        seed_everything(ctx.seed)  # each probe sees the same random state, whatever ran before it
        try:
            result = probe.run(ctx)
            break
        except Skip as exc:  # too little to work on in this run: said, not failed
            return ProbeResult(status="skipped", reason=str(exc), seconds=round(time.perf_counter() - start, 2))
        except torch.cuda.OutOfMemoryError:
            if ctx.batch_size <= 1:
                return _failed(ctx, start, f"out of GPU memory even at batch size 1 (from {first_batch})")
            smaller = ctx.batch_size // 2
            print(
                f"{_rank_prefix()}warning: {probe.name} ran out of GPU memory at batch size {ctx.batch_size}; retrying at {smaller}",
                file=sys.stderr,
            )
            ctx = replace(ctx, batch_size=smaller)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except (KeyboardInterrupt, distributed.Unanswered):  # the ranks lost each other: the run cannot go on
            raise
        except Exception:  # a crash is a result; the other probes still run
            return _failed(ctx, start, None)
    if ctx.device.type == "cuda":
        # the probe's own high-water mark on the GPU (reset above, before the probe ran)
        result = replace(
            result,
            details={**result.details, "gpu_peak_gib": round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 3)},
        )
    if ctx.batch_size != first_batch:
        note = Finding("info", f"ran at batch size {ctx.batch_size}: batch size {first_batch} ran out of GPU memory")
        result = replace(
            result, findings=(*result.findings, note), details={**result.details, "batch_size": ctx.batch_size}
        )
    return replace(result, seconds=round(time.perf_counter() - start, 2))


def _failed(ctx: Context, start: float, message: str | None) -> ProbeResult:
    """The failed result of the exception being handled (traceback in PROBE/error.log)."""
    exc = sys.exc_info()[1]
    log, rel = ctx.artifact("error.log")
    if ctx.main:
        log.write_text(traceback.format_exc(), encoding="utf-8")
    message = message or f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return ProbeResult(status="failed", seconds=round(time.perf_counter() - start, 2), error=message, artifacts=(rel,))


def check_model_output(adapter: ModelAdapter, data: EvalData, device: torch.device) -> None:
    """Fail fast, with the fix, when the model cannot even score the first batch sensibly."""
    x, _ = data.batch(slice(0, 8), device)
    try:
        with torch.no_grad():
            out = adapter(x)
    except Exception as exc:
        raise AuditError(f"{adapter.facts.name}: forward pass on {data.name} failed: {exc}".splitlines()[0]) from exc
    if not all(torch.isfinite(t).all() for t in _tensors(out)):
        raise AuditError(
            f"{adapter.facts.name}: the model returns NaN or infinite outputs on {data.name}; "
            "check the weights and --mean/--std"
        )


def _tensors(out):
    """Every tensor in a model output: a tensor, or tuples, lists and dicts of them (detectors)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from _tensors(v)


def write_outputs(results: Results, out: Path) -> dict[str, Path]:
    """results.json, report.html, junit.xml and summary.md, each written atomically."""
    out = Path(out)
    save(results, out / "results.json")
    paths = {"results": out / "results.json", "report": render_report(results, out)}
    for name, text in (("junit.xml", junit_xml(results)), ("summary.md", summary_md(results))):
        paths[name] = write_text_atomic(out / name, text)
    return paths


def _rank_prefix() -> str:
    return f"rank {distributed.rank()}: " if distributed.active() else ""


def _peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource  # Unix only: imported here so that the rest of the runner imports anywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 2)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _fingerprint(config: RunConfig, name: str, params: Any) -> str:
    key = {
        "model": asdict(config.model),
        "data": config.data,
        "limit": config.limit,
        "seed": config.seed,
        **({"data_seed": config.data_seed} if config.data_seed is not None else {}),
        "probe": name,
        "params": asdict(params),
        "version": auditor.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _load_partial(out: Path, name: str, fingerprint: str) -> ProbeResult | None:
    path = out / ".partial" / f"{name}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") == fingerprint and saved["result"]["status"] != "failed":
            return ProbeResult.from_dict(saved["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
