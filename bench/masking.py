"""Models that hide their gradients against the same model without the masking layer: the attacks probe's score and
worst-case robust accuracy per ε, whether the verdict is SUSPECT, and the time.

Kinds (tests/masked_models.py): an 8-bit input quantiser (round(): zero gradient), a layer whose backward is zero,
a detached input (no graph: a JPEG round trip or an external library), softmax probabilities as the output. The
goal: every masked variant SUSPECT, and its score within 0.05 of the unmasked model's.

    python bench/masking.py [--model digits-cnn] [--images 64] [--kinds quantise,zero-backward,detach,softmax]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the masked models

from auditor.data import seeded_subset  # noqa: E402
from auditor.models import ModelSpec, load_model  # noqa: E402
from auditor.probes.attacks import AttacksProbe  # noqa: E402
from tests.conftest import make_probe, probe_context  # noqa: E402
from tests.masked_models import masked  # noqa: E402
from zoo.registry import get_entry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-cnn", help="a zoo classifier")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--kinds", default="quantise,zero-backward,detach,softmax")
    ap.add_argument("--masked-queries", type=int, default=0, help="attacks.masked_queries (0: the probe's default)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(ModelSpec(model=args.model)).eval()
    x, y = get_entry(args.model).load_eval_set(0)
    pick = torch.tensor(seeded_subset(len(y), args.images, 0))
    x, y = x[pick], y[pick]
    params = {"min_eps_images": 0, "gallery": 0}
    if args.masked_queries:
        params["masked_queries"] = args.masked_queries
    grid = list(model.epsilons)
    print(f"{args.model} on {len(y)} held-out images; grid {', '.join(grid)}")
    print(f"{'model':>16} {'score':>6} {'diff':>6} " + " ".join(f"{e:>7}" for e in grid) + f" {'verdict':>8} {'s':>6}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ["none", *args.kinds.split(",")]:
            adapter = model if kind == "none" else masked(model, kind)
            start = time.perf_counter()
            r = make_probe(AttacksProbe, **params).run(probe_context("attacks", adapter, Path(tmp) / kind, x, y))
            took = time.perf_counter() - start
            base = r.score if base is None else base
            accs = " ".join(f"{r.metrics[f'robust_accuracy@linf={e}']:>7.3f}" for e in grid)
            verdict = "SUSPECT" if r.suspect else "ok"
            print(f"{kind:>16} {r.score:>6.3f} {r.score - base:>+6.3f} {accs} {verdict:>8} {took:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
