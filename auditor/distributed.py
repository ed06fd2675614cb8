"""Sharded audits on torch.distributed: `torchrun --nproc-per-node N -m auditor run ...`.

torchrun's conventions: the process group comes from the environment (env://) when WORLD_SIZE > 1,
LOCAL_RANK picks the GPU (cuda:LOCAL_RANK), NCCL on GPUs and gloo on CPUs. Without torchrun nothing
here does any work: every helper falls back to the plain loop of a single process.

The unit of work a rank takes is a chunk (a batch of the images, a batch of rows): chunk k goes to rank
k mod N, and every rank gets every chunk's result back (`chunked`), in chunk order, so each rank then
computes the same aggregates as a single process would from the same per-image outcomes; only rank 0
writes files. Chunks are the batches a single process runs too, and each chunk's random draws are
seeded from (run seed, chunk) alone (Context.seed_for), so on one kind of device a sharded run repeats
the single-process run's arithmetic batch for batch. The patch probe trains data-parallel instead: every
rank draws the same images and placements, runs its share of each step's rows, and the gradients are
summed across ranks (`summed`), which changes only the order of a float sum.

A rank that fails inside a chunk (or a gradient step) tells the others at the next exchange, and every
rank then fails that probe with the same message; a rank that stops answering (killed, stalled) makes
the others fail after AUDITOR_DIST_TIMEOUT seconds (default 1800) with a message that says so, never wait
forever. torchrun also stops the other ranks when one exits with an error.
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from auditor.errors import AuditError

TIMEOUT_ENV = "AUDITOR_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800  # seconds: a rank may wait this long while another finishes a big batch or writes the report


class RankFailed(Exception):
    """Another rank (or this one) failed inside a shared step: every rank raises it with the same first line, so
    the probe fails alike everywhere and the run goes on in step."""


class Unanswered(AuditError):
    """The ranks lost each other (one was killed or stalled past the timeout): the run cannot go on."""


def launched() -> bool:
    """Whether torchrun (or the same environment set by hand) asks for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes the run's files and prints its progress (rank 0, or the only process)."""
    return rank() == 0


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise AuditError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if value <= 0:
        raise AuditError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def start(device: torch.device) -> torch.device:
    """Join the process group torchrun describes, once per process; the device this rank runs on.

    A single process (WORLD_SIZE unset or 1) returns `device` as it is and starts nothing."""
    if not launched():
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise AuditError(
                f"--device {device}: under torchrun each rank takes cuda:LOCAL_RANK; pass --device cuda (or auto)"
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise AuditError(
                f"LOCAL_RANK {local}: this host has {torch.cuda.device_count()} CUDA device(s); start at most that "
                "many processes per node (--nproc-per-node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise AuditError(
                f"this process joined its group with {dist.get_backend()}; --device {device} needs {backend}"
            )
        return device
    try:
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_seconds()))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditError(f"torch.distributed ({backend}, env://) did not start: {first}") from exc
    atexit.register(stop)
    return device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def owned(n_chunks: int) -> range:
    """The chunks this rank computes: k mod N == rank (round robin, so a short last chunk costs one rank little)."""
    return range(rank(), n_chunks, size())


def share(n: int) -> slice:
    """This rank's contiguous share of n rows (the first n mod N ranks take one more): a data-parallel step."""
    per, extra = divmod(n, size())
    r = rank()
    lo = r * per + min(r, extra)
    return slice(lo, lo + per + (1 if r < extra else 0))


def chunked(fn: Callable[[int], Any], n_chunks: int, bar=None, steps: int | Callable[[int], int] = 0) -> list:
    """[fn(0), ..., fn(n_chunks - 1)]: a single process computes them in order; ranks compute the chunks they own
    and exchange the results, so every rank returns the whole list. Tensors travel through the CPU and come back
    on this rank's device (where they were on a device). `bar`: a progress bar (or a function of a count) that fn
    advances by `steps` per chunk (or steps(k) for chunk k); the chunks other ranks computed are counted on it
    afterwards."""
    if not active():
        return [fn(k) for k in range(n_chunks)]
    mine, failure = {}, None
    try:
        for k in owned(n_chunks):
            mine[k] = fn(k)
    except (KeyboardInterrupt, Unanswered):
        raise
    except Exception as exc:
        failure = _failure(exc)
    parts = gather(failure if failure is not None else mine)
    _raise_failures(parts)
    if bar is not None and steps:
        advance = bar.update if hasattr(bar, "update") else bar
        advance(sum(steps(k) if callable(steps) else steps for k in range(n_chunks) if k not in mine))
    merged = {k: v for part in parts for k, v in part.items()}
    return [merged[k] for k in range(n_chunks)]


def gather(obj: Any) -> list:
    """Every rank's `obj`, in rank order, on every rank (a single process: [obj])."""
    if not active():
        return [obj]
    out: list = [None] * size()
    try:
        dist.all_gather_object(out, _dumps(obj))
    except (RuntimeError, dist.DistBackendError) as exc:
        raise _unanswered(exc) from exc
    return [_loads(b) for b in out]


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [_dumps(obj) if is_main() else None]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise _unanswered(exc) from exc
    return _loads(box[0])


def summed(compute: Callable[[], Sequence[torch.Tensor]], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """compute() -> tensors shaped as `like` (a rank's gradients), summed over the ranks (a single process:
    compute() itself). A rank whose compute() raises sends zeros and a flag, and every rank raises RankFailed."""
    if not active():
        return list(compute())
    failure = None
    try:
        parts = [t.detach().reshape(-1) for t in compute()]
    except (KeyboardInterrupt, Unanswered):
        raise
    except Exception as exc:
        failure = _failure(exc)
        parts = [torch.zeros(t.numel(), dtype=t.dtype, device=t.device) for t in like]
    flag = torch.tensor([0.0 if failure is None else 1.0], dtype=like[0].dtype, device=like[0].device)
    flat = torch.cat([*parts, flag])
    try:
        dist.all_reduce(flat)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise _unanswered(exc) from exc
    if flat[-1] > 0:
        _raise_failures(gather(failure))
    out, at = [], 0
    for t in like:
        out.append(flat[at : at + t.numel()].view_as(t))
        at += t.numel()
    return out


# ---- failures -------------------------------------------------------------------------------------------------


class _Failure:
    """What a rank sends instead of its results when its own work raised."""

    def __init__(self, rank: int, line: str, text: str, out_of_memory: bool):
        self.rank, self.line, self.text, self.out_of_memory = rank, line, text, out_of_memory


def _failure(exc: BaseException) -> _Failure:
    line = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return _Failure(rank(), line, traceback.format_exc(), isinstance(exc, torch.cuda.OutOfMemoryError))


def _raise_failures(parts: list) -> None:
    failures = [p for p in parts if isinstance(p, _Failure)]
    if not failures:
        return
    if any(f.out_of_memory for f in failures):  # every rank retries at half the batch, in step (runner.run_probe)
        raise torch.cuda.OutOfMemoryError(f"rank {failures[0].rank}: {failures[0].line}")
    first = failures[0]
    others = f" (and {len(failures) - 1} other rank(s))" if len(failures) > 1 else ""
    raise RankFailed(f"rank {first.rank}{others}: {first.line}\n\nrank {first.rank}'s traceback:\n{first.text}")


def _unanswered(exc: BaseException) -> Unanswered:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unanswered(
        f"rank {rank()} of {size()}: the other ranks did not answer ({first}); one of them failed or stalled past "
        f"{TIMEOUT_ENV}={timeout_seconds():g} s: see its log"
    )


# ---- tensors across ranks -------------------------------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """Pickles device tensors as CPU tensors that unpickle onto the receiving rank's own device, and a view as the
    elements it shows (pickle would send its whole storage: a batch's slice of every image's mask)."""

    def reducer_override(self, obj):
        if not isinstance(obj, torch.Tensor) or obj.layout != torch.strided:
            return NotImplemented
        if obj.device.type != "cpu":
            return _on_device, (obj.detach().cpu(), obj.device.type)
        if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size():
            return _same, (obj.detach().clone(),)
        return NotImplemented


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _on_device(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t.to(kind)


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return pickle.loads(data)
