"""Streamed versus in-memory evaluation data: peak memory and time per image of a large label-free audit.

Writes N generated images (default 20,000 JPEGs at 128 px: one ellipse, box or triangle on a
coloured ground, with noise) into --dir, trains a small classifier on 3,000 more for a few seconds
(so that its predictions are not constant, which would leave the probes nothing to measure), and
audits the folder, label-free, with the attacks and augment probes once per loader. The model comes in
as `--model streaming:trained_classifier` (a Python callable): a .pt2 program would do too, but
torch.export.load alone takes 1.3 GiB resident (2 GiB at its peak) for any program, which would hide
the data's share.

    stream     --stream: the images are decoded from the files for every batch
    memory     --in-memory: the decoded set is held as one uint8 tensor (N x 3 x 128 x 128: 0.98 GB)

Each audit runs in its own process. Memory is sampled every 0.5 s as the proportional set size (PSS)
of the audit and its DataLoader workers together (forked workers share the parent's pages; PSS
counts a shared page once), and the audit's own peak RSS is read from results.json. Printed per
loader: wall time, seconds per image, peak PSS of the process tree, peak RSS of the audit process,
and the probe seconds; then the ratios stream / memory. Nothing is asserted.

The probes run on small budgets (APGD-CE + APGD-T, 5 steps, one eps; four shifts at one severity):
the bench measures the data path, not attack strength.

    python bench/streaming.py [--n 20000] [--size 128] [--dir /tmp/auditor-stream-bench]
                              [--loaders stream,memory] [--batch-size 64] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image, ImageDraw
from torch import nn

SHAPES = ("ellipse", "box", "triangle")
WEIGHTS_ENV = "AUDITOR_BENCH_WEIGHTS"
PROBE_SETTINGS = [
    "attacks.ensemble=fast",
    "attacks.steps=5",
    "attacks.targets=1",
    "attacks.eps=4/255",
    "attacks.min_eps_images=0",
    "attacks.check_images=0",
    "augment.shifts=gaussian_noise,brightness,contrast,pixelate",
    "augment.severities=3",
]


def draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """One generated image (size x size x 3 uint8) and its shape's class."""
    label = int(rng.integers(len(SHAPES)))
    ground = tuple(int(v) for v in rng.integers(0, 256, 3))
    ink = tuple(int(v) for v in (np.array(ground) + rng.integers(80, 176, 3)) % 256)
    im = Image.new("RGB", (size, size), ground)
    pen = ImageDraw.Draw(im)
    r = rng.uniform(0.15, 0.35) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if SHAPES[label] == "ellipse":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    elif SHAPES[label] == "box":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=ink)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=ink)
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), label


def write_images(folder: Path, n: int, size: int) -> None:
    """n generated JPEGs in one flat folder (label-free); kept when a previous run wrote the same n."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for i in range(n):
        Image.fromarray(draw(rng, size)[0]).save(folder / f"img{i:06d}.jpg", quality=90)
    print(f"wrote {n} images of {size} px in {time.perf_counter() - started:.0f} s", flush=True)


def small_classifier() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    widths = (3, 16, 32, 32, 64, 64)
    layers = [m for cin, cout in zip(widths, widths[1:]) for m in block(cin, cout)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], len(SHAPES)))


def trained_classifier() -> nn.Module:
    """The audit's `--model streaming:trained_classifier`: the weights train() saved (AUDITOR_BENCH_WEIGHTS)."""
    net = small_classifier()
    net.load_state_dict(torch.load(os.environ[WEIGHTS_ENV], weights_only=True))
    return net


def train(path: Path, size: int) -> float:
    """A small classifier of the generated shapes (8 epochs on 3,000); its accuracy on 600 fresh ones."""
    rng = np.random.default_rng(1)
    pairs = [draw(rng, size) for _ in range(3600)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([p[1] for p in pairs])
    torch.manual_seed(0)
    net = small_classifier()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(8):
        net.train()
        for i in torch.randperm(3000).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x[3000:]).argmax(1) == y[3000:]).float().mean())
    torch.save(net.state_dict(), path)
    return accuracy


def tree_pss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def audit(loader: str, weights: Path, images: Path, out: Path, args) -> dict:
    command = [
        str(Path(sys.executable).with_name("audit")), "run", "--model", "streaming:trained_classifier",
        "--input-size", str(args.size),
        "--data", str(images), f"--{'stream' if loader == 'stream' else 'in-memory'}", "--probes", "attacks,augment",
        "--batch-size", str(args.batch_size), "--out", str(out),
        *(["--workers", str(args.workers)] if args.workers is not None else []),
        *[a for s in PROBE_SETTINGS for a in ("--set", s)],
    ]  # fmt: skip
    started = time.perf_counter()
    env = {**os.environ, WEIGHTS_ENV: str(weights), "PYTHONPATH": str(Path(__file__).parent)}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watched, peak, done = psutil.Process(child.pid), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], tree_pss(watched))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = child.communicate()[0]
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if child.returncode not in (0, 1):  # 1: a gate failed, which the bench does not judge
        print(output[-3000:])
        raise SystemExit(f"{loader}: audit exited {child.returncode}")
    results = json.loads((out / "results.json").read_text())
    n = results["data"]["n"]
    return {
        "loader": loader,
        "n": n,
        "streamed": bool(results["data"].get("streamed")),
        "wall_s": wall,
        "ms_per_image": 1000 * wall / n,
        "tree_pss_gib": peak[0] / 2**30,
        "audit_rss_gib": results["run"]["peak_memory_gib"],
        "probes": {k: v["seconds"] for k, v in results["probes"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/auditor-stream-bench"))
    parser.add_argument("--loaders", default="stream,memory")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    images, weights = args.dir / "images", args.dir / "net.pth"
    write_images(images, args.n, args.size)
    if not weights.exists():
        print(f"small classifier: accuracy {train(weights, args.size):.2f} on 600 fresh images", flush=True)
    rows = []
    for loader in args.loaders.split(","):
        row = audit(loader, weights, images, args.dir / f"out-{loader}", args)
        rows.append(row)
        print(
            f"{loader:>7}: {row['n']} images, wall {row['wall_s']:.0f} s ({row['ms_per_image']:.1f} ms/image), "
            f"peak PSS (audit + workers) {row['tree_pss_gib']:.2f} GiB, audit peak RSS {row['audit_rss_gib']:.2f} GiB, "
            f"probes {row['probes']}",
            flush=True,
        )
    by = {r["loader"]: r for r in rows}
    if {"stream", "memory"} <= by.keys():
        s, m = by["stream"], by["memory"]
        print(
            f"stream / memory: time per image {s['ms_per_image'] / m['ms_per_image']:.2f}x, "
            f"peak PSS {s['tree_pss_gib'] / m['tree_pss_gib']:.2f}x, audit RSS {s['audit_rss_gib'] / m['audit_rss_gib']:.2f}x"
        )


if __name__ == "__main__":
    main()
