"""ImageNet-C corruption throughput: the project's batched `auditor.probes.augment.corruptions` versus `imagecorruptions`.

Prints, for each of the 15 corruptions at one severity (--severity, default 3; every
severity with --all-severities), images per second of the project's `corrupt` on one
batch of B real photographs (B x 3 x size x size in [0, 1]) and of the reference package
`imagecorruptions` 1.1.2 applied per image to the same photographs (uint8 size x size x 3),
and the ratio project / reference. Then the whole suite, 15 corruptions x 5 severities:
total images over total seconds for each side, and their ratio (the design target is
>= 20x). Last, for the corruptions that draw no random numbers (defocus_blur, zoom_blur,
brightness, contrast, pixelate, jpeg_compression), the mean absolute difference in [0, 1]
between the two outputs at every severity; and for all 15 the "strength" of each side,
mean |corrupted - clean|, a rough check that random ones degrade about as much, and the seconds
each side spends on one corruption's 5 severities (where the suite's time goes).

Timing: a warm-up call first (the project: one full batch; the reference: one image), then
the best of --repeats timed calls. A reference call is a pass over all B images; when one
such pass takes long (glass blur: seconds per image) the reference stops repeating once
--ref-budget seconds are spent, and the row says how many passes it got. Randomness: the
project gets a seeded torch.Generator, the reference a seeded np.random. Nothing is asserted.

    python bench/corruptions.py [--size 224] [--batch 32] [--device cpu|cuda] [--repeats 3]
                                [--severity 3] [--all-severities] [--ref-budget 20] [--no-reference]
                                [--threads N] [--seed 0]

Bench-only environment. `imagecorruptions` is not a project dependency and would not run in
the project's environment: it imports pkg_resources (gone from setuptools >= 81), needs numpy < 2
(np.float_ in its fog) and scikit-image's `multichannel=` keyword (glass blur).
Make a separate venv with the pins of bench/requirements-corruptions.txt (torch comes from the
same local wheels as the project's; about a minute):

    python3 -m venv /tmp/benchenv
    /tmp/benchenv/bin/pip install -r bench/requirements-corruptions.txt
    /tmp/benchenv/bin/python bench/corruptions.py --size 224 --batch 16

scikit-image 0.20.0 is the oldest release with Python 3.11 wheels, and it has already dropped
`multichannel=` from skimage.filters.gaussian (0.19.x, the last with it, has no 3.11 wheel).
So this script carries a COMPATIBILITY SHIM (`_gaussian_multichannel_shim` below): when the
installed gaussian lacks the keyword, the name `gaussian` inside imagecorruptions.corruptions
is replaced by a wrapper that maps multichannel=True/False to channel_axis=-1/None, which is
the same computation. It touches glass_blur only (among the 15; gaussian_blur and spatter
are validation corruptions not timed here). The shim is announced in the output when used.

Without imagecorruptions (e.g. in the project's own venv) the script says why and times the
project only. Images: scikit-image's bundled photographs when scikit-image is installed,
else ultralytics' bundled bus.jpg and zidane.jpg, square crops (mirrored and shifted for
repeats) resized to --size; they are listed in the output.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a venv where the project is not installed
    sys.path.insert(0, str(ROOT))

from auditor.probes.augment.corruptions import CORRUPTIONS, corrupt  # noqa: E402

SEVERITIES = (1, 2, 3, 4, 5)
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")


def timed(fn, repeats: int, sync, warmup=None, budget: float = math.inf) -> tuple[float, int]:
    """Best wall time of up to `repeats` calls after a warm-up; stops early once `budget` s are spent."""
    (warmup or fn)()
    sync()
    best, spent, n = math.inf, 0.0, 0
    while n < repeats and (n == 0 or spent < budget):
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, n = min(best, elapsed), spent + elapsed, n + 1
    return best, n


# ---------------------------------------------------------------- images


def _photos() -> tuple[list[np.ndarray], str]:
    """Natural colour photographs (H x W x 3 uint8) shipped inside installed packages."""
    try:
        import skimage.data as data

        loaders = {
            "astronaut": data.astronaut,
            "chelsea": data.chelsea,
            "coffee": data.coffee,
            "rocket": data.rocket,
            "immunohistochemistry": data.immunohistochemistry,
            "motorcycle_left": lambda: data.stereo_motorcycle()[0],
        }
        photos, names = [], []
        for name, load in loaders.items():
            try:
                photos.append(np.asarray(load())[..., :3])
                names.append(name)
            except Exception:  # noqa: BLE001 - one missing sample file: use the others
                pass
        if photos:
            return photos, "skimage.data " + ", ".join(names)
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec and spec.origin:
        assets = Path(spec.origin).parent / "assets"
        files = sorted(assets.glob("*.jpg"))
        if files:
            return (
                [np.asarray(Image.open(f).convert("RGB")) for f in files],
                "ultralytics assets " + ", ".join(f.name for f in files),
            )
    raise SystemExit("no bundled photographs found: install scikit-image (or ultralytics) for real test images")


def load_images(n: int, size: int) -> tuple[np.ndarray, str]:
    """n x size x size x 3 uint8: square crops of the photographs, cycled; later rounds shift the crop and mirror."""
    photos, source = _photos()
    positions = (0.5, 0.0, 1.0, 0.25, 0.75)
    out = []
    for i in range(n):
        photo, rnd = photos[i % len(photos)], i // len(photos)
        h, w = photo.shape[:2]
        side = min(h, w)
        pos = positions[rnd % len(positions)]
        top, left = int((h - side) * pos), int((w - side) * pos)
        crop = photo[top : top + side, left : left + side]
        if rnd % 2:
            crop = crop[:, ::-1]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.LANCZOS)))
    distinct = min(n, len(photos) * len(positions) * 2)
    return np.stack(out), f"{source} ({n} images, {distinct} distinct crops, {size} x {size})"


# ---------------------------------------------------------------- the reference


def _gaussian_multichannel_shim(module) -> bool:
    """COMPATIBILITY SHIM for imagecorruptions 1.1.2 on scikit-image >= 0.20 (see the docstring).

    Replaces the `gaussian` that imagecorruptions.corruptions imported from skimage.filters
    by a wrapper mapping the removed multichannel=True/False to channel_axis=-1/None.
    Returns True when it had to.
    """
    original = module.gaussian
    if "multichannel" in inspect.signature(original).parameters:
        return False

    def gaussian(image, *args, multichannel=None, **kwargs):
        if multichannel is not None:
            kwargs.setdefault("channel_axis", -1 if multichannel else None)
        return original(image, *args, **kwargs)

    module.gaussian = gaussian
    return True


def load_reference():
    """(imagecorruptions.corrupt, a line about it) or (None, why not)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources' deprecation notice on import
            import imagecorruptions
            import imagecorruptions.corruptions as module
    except Exception as e:  # noqa: BLE001 - any import failure is reported, the project still timed
        return None, f"imagecorruptions not importable ({type(e).__name__}: {e}); timing the project only"
    versions = []
    for mod in ("skimage", "scipy", "cv2"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001
            pass
    from importlib.metadata import version

    line = f"imagecorruptions {version('imagecorruptions')} (numpy {np.__version__}, {', '.join(versions)})"
    if _gaussian_multichannel_shim(module):
        line += "; SHIM: skimage gaussian(multichannel=) mapped to channel_axis (glass_blur)"
    return imagecorruptions.corrupt, line


# ---------------------------------------------------------------- main


def fmt_rate(v: float | None) -> str:
    return f"{v:10.1f}" if v is not None else f"{'-':>10}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--severity", type=int, default=3, choices=SEVERITIES)
    ap.add_argument("--all-severities", action="store_true", help="one table row per corruption and severity")
    ap.add_argument(
        "--ref-budget",
        type=float,
        default=20.0,
        help="seconds after which the reference stops repeating one corruption and severity",
    )
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice); the reference is mostly single-threaded",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    images, source = load_images(args.batch, args.size)
    clean = images.astype(np.float32) / 255
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous().to(device)
    reference, ref_line = (None, "reference skipped (--no-reference)") if args.no_reference else load_reference()

    print(
        f"device {device}, batch {args.batch}, size {args.size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(f"images: {source}")
    print(f"reference: {ref_line}")
    if hasattr(os, "getloadavg"):
        print(f"load average at start {os.getloadavg()[0]:.2f} (other work on the machine skews the figures)")
    print(
        f"timing: warm-up, then best of {args.repeats} calls (project: one batched call; reference: one "
        f"per-image pass over the same {args.batch} images, fewer passes past {args.ref_budget:g} s)"
    )

    B = args.batch
    rows = {}  # (name, severity) -> dict
    for name in CORRUPTIONS:
        for s in SEVERITIES:
            row = rows[name, s] = {}
            g = torch.Generator(device=device).manual_seed(args.seed)
            box = {}

            def run_project():
                box["out"] = corrupt(x, name, s, generator=g)

            t, _ = timed(run_project, args.repeats, sync)
            row["project_t"] = t
            proj = box["out"].permute(0, 2, 3, 1).float().cpu().numpy()
            row["project_out"] = proj
            row["project_strength"] = float(np.abs(proj - clean).mean())
            if reference is None:
                continue
            np.random.seed(args.seed)
            ref_box = {}

            def run_reference():
                ref_box["out"] = [reference(img, corruption_name=name, severity=s) for img in images]

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t, n = timed(
                        run_reference,
                        args.repeats,
                        lambda: None,
                        budget=args.ref_budget,
                        warmup=lambda: reference(images[0], corruption_name=name, severity=s),
                    )
            except Exception as e:  # noqa: BLE001 - a broken reference corruption is reported, not fatal
                row["ref_error"] = f"{type(e).__name__}: {e}"
                continue
            row["ref_t"], row["ref_n"] = t, n
            ref = np.stack(ref_box["out"]).astype(np.float32) / 255
            row["ref_out"] = ref
            row["ref_strength"] = float(np.abs(ref - clean).mean())
        print(f"  timed {name}", file=sys.stderr, flush=True)

    shown = SEVERITIES if args.all_severities else (args.severity,)
    print(
        f"\n{'corruption':<18} {'sev':>3} {'project img/s':>14} {'imagecorr img/s':>16} {'ratio':>8} "
        f"{'ref passes':>10}   {'strength proj':>13} {'ref':>6}   {'s for 5 sev: proj':>17} {'ref':>7}"
    )
    for name in CORRUPTIONS:
        for s in shown:
            r = rows[name, s]
            p = B / r["project_t"]
            q = B / r["ref_t"] if "ref_t" in r else None
            ratio = f"{p / q:7.1f}x" if q else f"{'-':>8}"
            passes = f"{r['ref_n']:>10}" if "ref_n" in r else f"{'error' if 'ref_error' in r else '-':>10}"
            rs = f"{r['ref_strength']:6.3f}" if "ref_strength" in r else f"{'-':>6}"
            suite_p = sum(rows[name, v]["project_t"] for v in SEVERITIES)
            suite_r = (
                f"{sum(rows[name, v]['ref_t'] for v in SEVERITIES):7.2f}"
                if all("ref_t" in rows[name, v] for v in SEVERITIES)
                else f"{'-':>7}"
            )
            print(
                f"{name:<18} {s:>3} {p:14.1f} {fmt_rate(q):>16} {ratio} {passes}   "
                f"{r['project_strength']:13.3f} {rs}   {suite_p:17.2f} {suite_r}"
            )
    for (name, s), r in rows.items():
        if "ref_error" in r:
            print(f"reference error, {name} severity {s}: {r['ref_error']}")

    total_p = sum(r["project_t"] for r in rows.values())
    n_images = B * len(rows)
    print(
        f"\nwhole suite, {len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities = {n_images} images each side:"
    )
    print(f"  project          {n_images / total_p:10.1f} img/s  ({total_p:8.2f} s)")
    if reference is not None and all("ref_t" in r for r in rows.values()):
        total_r = sum(r["ref_t"] for r in rows.values())
        print(f"  imagecorruptions {n_images / total_r:10.1f} img/s  ({total_r:8.2f} s)")
        print(f"  ratio            {total_r / total_p:10.1f}x  (design target >= 20x)")
    elif reference is not None:
        print("  imagecorruptions: not every corruption ran, no suite figure")

    if hasattr(os, "getloadavg"):
        print(f"load average at end {os.getloadavg()[0]:.2f}")
    if reference is None:
        return
    print(
        "\ndeterministic corruptions, mean |project - reference| in [0, 1] (reference output is uint8, "
        "truncated; 'floored' truncates the project's output the same way first), max in 1/255 steps:"
    )
    print(f"{'corruption':<18} {'':<8}" + "".join(f"{'sev ' + str(s):>9}" for s in SEVERITIES) + f"{'max':>8}")
    for name in DETERMINISTIC:
        if not all("ref_out" in rows[name, s] for s in SEVERITIES):
            continue
        for label, q in (("raw", lambda a: a), ("floored", lambda a: np.floor(a * 255 + 1e-4) / 255)):
            diffs = [np.abs(q(rows[name, s]["project_out"]) - rows[name, s]["ref_out"]) for s in SEVERITIES]
            print(
                f"{name if label == 'raw' else '':<18} {label:<8}"
                + "".join(f"{d.mean():9.4f}" for d in diffs)
                + f"{max(d.max() for d in diffs) * 255:8.1f}"
            )


if __name__ == "__main__":
    main()
