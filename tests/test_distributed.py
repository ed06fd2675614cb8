"""Sharded audits (auditor/distributed.py): the shard and exchange helpers on a real two-process gloo group, and a
whole audit of digits-cnn with every probe under `torchrun --nproc-per-node 2` against the same audit in one
process.

What must be equal, and why a tolerance at all: every rank computes the same batches a single process runs, with
each batch's draws seeded from (run seed, batch) alone, so the attacks, augment, gradcam and filters figures repeat
the single-process arithmetic exactly. Two probes change the order of float sums: patch sums its gradients across
ranks (all-reduce) and actmax optimises its targets in shares of the batch (a convolution's kernels may differ with
the batch size). TOLERANCE bounds what that may move a figure by; a per-image outcome that flips moves a rate by a
whole image (1/12 of the held-out split here), far beyond it, so the test still catches any sharding error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from auditor import distributed
from tests.conftest import FAST

TOLERANCE = 1e-4  # absolute, on scores and metrics in [0, 1] (and AUCs, ratios): float-sum order only

# Every probe, cheap: 24 digits in batches of 8 (3 batches: rank 0 takes two, rank 1 one), FAST's budgets, and
# the shifts cut to four (one of each kind that draws noise, warps, or does neither).
ARGS = [
    "run",
    "--model",
    "digits-cnn",
    "--device",
    "cpu",
    "--limit",
    "24",
    "--batch-size",
    "8",
    "--probes",
    "all",
    *FAST,
    "--set",
    "augment.shifts=gaussian_noise,contrast,rotate,translate",
    "--set",
    "augment.severities=1,3",
    "--set",
    "patch.restarts=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank: int, world: int, port: int, test, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ[distributed.TIMEOUT_ENV] = "60"
    torch.set_num_threads(1)
    try:
        distributed.start(torch.device("cpu"))
        queue.put((rank, test()))
    except BaseException as exc:  # the parent reads it
        queue.put((rank, f"{type(exc).__name__}: {exc}"))
    finally:
        distributed.stop()


def in_two_ranks(test) -> list:
    """test() run on each rank of a 2-process gloo group; its results in rank order."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_in_group, args=(r, 2, port, test, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    return [got[r] for r in range(2)]


# ---- the helpers, in one process and in two ----------------------------------------------------------------------


def test_single_process_is_the_plain_loop():
    assert not distributed.active() and distributed.is_main() and distributed.size() == 1
    assert distributed.chunked(lambda k: k * k, 4) == [0, 1, 4, 9]
    assert distributed.share(5) == slice(0, 5)
    assert distributed.gather("x") == ["x"] and distributed.broadcast(3) == 3
    t = torch.ones(2)
    assert distributed.summed(lambda: [t * 3], [t])[0].tolist() == [3.0, 3.0]


def test_a_view_travels_as_its_own_elements():
    big = torch.arange(100_000)
    sent = distributed._dumps({"batch": big[10:12]})
    assert len(sent) < 2_000 and distributed._loads(sent)["batch"].tolist() == [10, 11]


def test_start_without_a_launcher_starts_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.start(torch.device("cpu")) == torch.device("cpu")
    assert not dist.is_initialized()


def _chunks_and_shares():
    ran = []

    def fn(k):
        ran.append(k)
        return {"k": k, "t": torch.full((2,), float(k)), "rank": distributed.rank()}

    out = distributed.chunked(fn, 5)
    shares = [distributed.share(n) for n in (0, 1, 5)]
    grads = distributed.summed(lambda: [torch.full((3,), distributed.rank() + 1.0)], [torch.zeros(3)])
    return {
        "ran": ran,
        "ks": [o["k"] for o in out],
        "values": [o["t"].tolist() for o in out],
        "computed_by": [o["rank"] for o in out],
        "shares": [(s.start, s.stop) for s in shares],
        "summed": grads[0].tolist(),
        "gathered": distributed.gather(distributed.rank() * 10),
        "broadcast": distributed.broadcast(f"from {distributed.rank()}"),
    }


def _one_rank_fails():
    def fn(k):
        if k == 1:
            raise ValueError("chunk 1 is broken")
        return k

    try:
        distributed.chunked(fn, 3)
    except distributed.RankFailed as exc:
        first = str(exc).splitlines()[0]
    else:
        return "no error"

    def grads():
        if distributed.rank() == 0:
            raise RuntimeError("no gradient here")
        return [torch.ones(2)]

    try:
        distributed.summed(grads, [torch.zeros(2)])
    except distributed.RankFailed as exc:
        return first, str(exc).splitlines()[0], distributed.chunked(lambda k: k, 2)  # still in step afterwards
    return first, "no error"


def _rank_1_leaves():
    if distributed.rank() == 1:
        return "left"
    try:
        distributed.gather("anyone?")
    except distributed.Unanswered as exc:
        return str(exc)
    return "no error"


def _scenarios():
    """The three in one group (starting two processes costs more than the checks): the last breaks the group."""
    return {"chunks": _chunks_and_shares(), "failure": _one_rank_fails(), "leaves": _rank_1_leaves()}


@pytest.fixture(scope="module")
def two_ranks():
    started = time.perf_counter()
    ranks = in_two_ranks(_scenarios)
    assert all(isinstance(r, dict) for r in ranks), ranks  # else the error a rank raised
    return ranks, time.perf_counter() - started


def test_chunks_are_shared_round_robin_and_every_rank_gets_all(two_ranks):
    r0, r1 = (r["chunks"] for r in two_ranks[0])
    assert r0["ran"] == [0, 2, 4] and r1["ran"] == [1, 3]  # each chunk computed once, by rank k mod 2
    for r in (r0, r1):
        assert r["ks"] == [0, 1, 2, 3, 4]  # every rank gets every chunk, in order
        assert r["values"] == [[float(k)] * 2 for k in range(5)]
        assert r["computed_by"] == [0, 1, 0, 1, 0]
        assert r["summed"] == [3.0, 3.0, 3.0]  # 1 + 2
        assert r["gathered"] == [0, 10]
        assert r["broadcast"] == "from 0"
    assert r0["shares"] == [(0, 0), (0, 1), (0, 3)] and r1["shares"] == [(0, 0), (1, 1), (3, 5)]


def test_a_failure_on_one_rank_fails_every_rank_alike_without_hanging(two_ranks):
    r0, r1 = (r["failure"] for r in two_ranks[0])
    assert r0 == r1 == ("rank 1: ValueError: chunk 1 is broken", "rank 0: RuntimeError: no gradient here", [0, 1])


def test_a_rank_that_stops_answering_ends_the_wait(two_ranks):
    r0, r1 = (r["leaves"] for r in two_ranks[0])
    assert r1 == "left"
    assert "did not answer" in r0 and distributed.TIMEOUT_ENV in r0
    assert two_ranks[1] < 90  # nobody waited out the 60 s timeout on top of the start


# ---- a whole audit: torchrun, 2 ranks (gloo) against one process ---------------------------------------------------


def _run(cmd: list[str], out: Path, cwd: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "120"}
    env.pop("PYTEST_XDIST_WORKER", None)
    started = time.perf_counter()
    proc = subprocess.run(
        [*cmd, *ARGS, "--out", str(out)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return seconds


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def differences(single: dict, sharded: dict) -> dict[str, float]:
    """Per probe, the largest absolute difference over its score, metrics and intervals (0 where all equal)."""
    out = {}
    for name, p in single["probes"].items():
        q = sharded["probes"][name]
        pairs = [(p["score"], q["score"])] + [(v, q["metrics"].get(k)) for k, v in p["metrics"].items()]
        pairs += [(x, y) for k, iv in p.get("intervals", {}).items() for x, y in zip(iv, q["intervals"][k])]
        out[name] = max([abs(a - b) for a, b in pairs if isinstance(a, float) and isinstance(b, float)], default=0.0)
    return out


@pytest.mark.slow
def test_two_rank_torchrun_audit_equals_the_single_process_one(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun (installed with torch) is not on the PATH"
    repo = Path(__file__).resolve().parents[1]
    one = _run([sys.executable, "-m", "auditor"], tmp_path / "one", repo)
    two = _run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "auditor"], tmp_path / "two", repo)
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    sharded = json.loads((tmp_path / "two" / "results.json").read_text())
    print(
        f"one process {one:.1f} s, two ranks {two:.1f} s; largest difference per probe: {differences(single, sharded)}"
    )

    assert sharded["run"]["ranks"] == 2 and "ranks" not in single["run"]
    assert sharded["data"] == single["data"]  # the same images (digest), labels and counts
    assert (
        set(sharded["probes"])
        == set(single["probes"])
        == {"actmax", "attacks", "augment", "filters", "gradcam", "patch"}
    )
    for name, p in single["probes"].items():
        q = sharded["probes"][name]
        assert q["status"] == p["status"] == "ok", (name, q.get("error"))
        assert _close(q["score"], p["score"]), (name, q["score"], p["score"])
        assert q["metrics"].keys() == p["metrics"].keys(), name
        for key, value in p["metrics"].items():
            assert _close(q["metrics"][key], value), (name, key, q["metrics"][key], value)
        assert _close(q.get("intervals", {}), p.get("intervals", {})), name
        assert [f["text"] for f in q["findings"]] == [f["text"] for f in p["findings"]], name
        assert q["artifacts"] == p["artifacts"], name
    assert _close(sharded["score"], single["score"])
    assert sharded.get("findings") == single.get("findings")
    # only rank 0 wrote: one report, one results.json, the probes' figures once
    assert (tmp_path / "two" / "report.html").is_file()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
