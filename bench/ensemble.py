"""The attack ensemble against torchattacks' AutoAttack ("standard": APGD-CE, APGD-T, FAB-T, Square 5000) on the
same model, images and ε: robust accuracy of each, and time.

An image counts as robust for either only if it withstands every attack of its ensemble. Both run on the
same seeded subset of the model's held-out set; the ensemble runs with the attacks probe's defaults
(`attacks.ensemble=standard`). Prints one row per ε and the totals, with the speed-up (AutoAttack's time /
the ensemble's) and the accuracy difference (ensemble - AutoAttack; <= 0.01 is the goal).

    python bench/ensemble.py [--model digits-cnn] [--images 100] [--eps 0.02,0.05] [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from auditor.data import seeded_subset
from auditor.models import ModelSpec, load_model
from auditor.probes.attacks import AttacksProbe, parse_eps
from auditor.probes.attacks.ensemble import ENSEMBLES, Budget, Ensemble
from auditor.tasks import task_of


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-cnn", help="a zoo classifier")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--eps", default="", help="budgets, comma-separated (default: the model's grid)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchattacks

    from zoo.registry import get_entry

    device = torch.device(args.device)
    model = load_model(ModelSpec(model=args.model)).eval().to(device)
    x, y = get_entry(args.model).load_eval_set(args.seed)
    pick = torch.tensor(seeded_subset(len(y), args.images, args.seed))
    x, y = x[pick].to(device), y[pick].to(device)
    grid = args.eps.split(",") if args.eps else list(model.epsilons)
    p = AttacksProbe.Params().sized(task_of(model))
    budget = Budget(p.steps, p.targets, p.square_queries)
    print(f"{args.model} on {len(y)} held-out images, {device}; clean accuracy {accuracy(model, x, y):.3f}")
    print(f"ensemble: APGD-CE {p.steps} steps, APGD-T {p.targets} targets x {p.steps}, Square {p.square_queries}")
    print(f"{'eps':>8} {'ensemble':>9} {'s':>7} {'AutoAttack':>11} {'s':>7} {'diff':>7} {'speed-up':>9}")
    totals = [0.0, 0.0]
    for e in grid:
        eps = parse_eps(e)
        ens = Ensemble(
            model, task_of(model), ENSEMBLES["standard"], budget, "linf", torch.Generator(device).manual_seed(0)
        )
        start = time.perf_counter()
        ours = accuracy(model, ens.run(x, y.cpu(), eps).adv, y)
        t_ours = time.perf_counter() - start
        aa = torchattacks.AutoAttack(
            model, norm="Linf", eps=eps, version="standard", n_classes=model.num_classes, seed=0
        )
        start = time.perf_counter()
        theirs = accuracy(model, aa(x, y), y)
        t_aa = time.perf_counter() - start
        totals[0] += t_ours
        totals[1] += t_aa
        print(
            f"{e:>8} {ours:>9.3f} {t_ours:>7.1f} {theirs:>11.3f} {t_aa:>7.1f} {ours - theirs:>+7.3f} {t_aa / t_ours:>8.1f}x"
        )
    print(f"{'total':>8} {'':>9} {totals[0]:>7.1f} {'':>11} {totals[1]:>7.1f} {'':>7} {totals[1] / totals[0]:>8.1f}x")


if __name__ == "__main__":
    main()
