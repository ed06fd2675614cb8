"""Grad-CAM throughput: the project's `auditor.cam.cam_maps` versus the model's forward+backward and peers.

One model, one batch of B images, one target class per image (the model's own prediction), one
device, one run. Images per second of each row, and ratios: row / "model fwd+bwd" (1.0 = Grad-CAM
costs nothing on top of the one pass it needs; design target: one fwd+bwd per batch) and ours / peer
(design target: >= 2x pytorch-grad-cam).

    model fwd+bwd        forward, then torch.autograd.grad of the sum of the target logits w.r.t. the
                         target layer's output (forward hook): the least any Grad-CAM must do
    (+ weight grads)     forward, then .backward() of that sum through the whole net, weight gradients
                         included: what pytorch-grad-cam's loss.backward() computes (context only)
    ours gradcam         cam_maps(score_fn, [layer], x, ["gradcam"]): raw N x h x w maps
    ours gradcam+up+norm the same, then auditor.cam.upsample to the input size and normalise (/ peak)
    ours gradcam+gc++    cam_maps(..., ["gradcam", "gradcam++"]): both from the same pass
    captum batched       captum LayerGradCam(model, layer).attribute(x, target=..., relu_attributions=True)
    captum per image     the same, in a loop over the B images
    pgc GradCAM / ++     pytorch-grad-cam on the batch: besides fwd+bwd it upsamples each map to the input
                         size and min-max normalises it on the CPU with numpy/cv2, part of what users pay

Timing: a warm-up call of every method, then --repeats rounds in which every method runs in turn
(load from other jobs hits all alike), each back to back for >= --min-time s; the MEDIAN time per
call over the rounds is shown, with the min..max (a wide one: other jobs were running; on a shared
machine --threads 1 gives steadier figures, as 2 threads stall whenever another job takes a core). Correctness, same run: max |ours - captum| on the
raw maps (float precision expected); ours upsampled and normalised against pytorch-grad-cam's maps:
per-image Pearson correlation (near 1 expected: its min-max scaling is affine) and the max absolute
difference, raw and after the same min-max of the upsampled map as theirs.

Models: resnet50 / resnet18 from torchvision with RANDOM weights (weights=None: no downloads here;
the cost does not depend on the weights) on uniform-noise 3 x 224 x 224 images, layer `layer4`;
digits-cnn from the zoo on its held-out digits (1 x 28 x 28), layer its cam_layers[0].

Bench-only dependencies (not the project's), next to the project's torch without touching it
(bench/requirements-gradcam.txt):

    pip install --no-deps grad-cam ttach opencv-python-headless
    python bench/gradcam.py [--model resnet50|resnet18|digits-cnn] [--batch 16] [--repeats 3]
                            [--device cpu|cuda] [--threads N] [--min-time 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `zoo` (and `auditor`, if not installed) live at the repository root
    sys.path.insert(0, str(ROOT))


def build(name: str, batch: int):
    """(model in eval mode, target layer, B x C x H x W images in [0, 1], description)."""
    if name == "digits-cnn":
        import zoo.digits_cnn
        from auditor.models import ModelSpec, load_model

        model = load_model(ModelSpec(model="digits-cnn")).eval()
        layer_name, layer = model.cam_layers[0]
        images, _ = zoo.digits_cnn.load_test_set()
        x = images[:batch]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return model, layer, x, f"digits-cnn (trained, zoo) on {len(x)} held-out digits, layer {layer_name}"
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, model.layer4, x, f"{name} (torchvision, RANDOM weights) on uniform noise 3x224x224, layer layer4"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50", choices=("resnet50", "resnet18", "digits-cnn"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--min-time",
        type=float,
        default=0.3,
        help="a timing repeats a fast method until it lasts this many seconds, against timer noise",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from auditor.cam import cam_maps, normalise, upsample

    model, layer, x, about = build(args.model, args.batch)
    model, x = model.to(device), x.to(device)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    rows = torch.arange(len(x), device=device)
    B = len(x)

    def fwd_bwd():
        seen = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
        try:
            logits = model(x.detach().requires_grad_(True))  # as cam_maps: a graph to the layer even if frozen
        finally:
            handle.remove()
        return torch.autograd.grad(logits[rows, targets].sum(), seen["a"])

    def fwd_bwd_all():
        model.zero_grad(set_to_none=True)
        model(x)[rows, targets].sum().backward()

    def score_fn(b):
        return model(b)[torch.arange(len(b), device=b.device), targets]

    captum = LayerGradCam(model, layer)
    pgc_targets = [ClassifierOutputTarget(int(c)) for c in targets]

    def pgc(cls):
        with cls(model=model, target_layers=[layer]) as cam:
            return cam(input_tensor=x, targets=pgc_targets)

    methods = {
        "model fwd+bwd": fwd_bwd,
        "(+ weight grads)": fwd_bwd_all,
        "ours gradcam": lambda: cam_maps(score_fn, [layer], x, ["gradcam"]),
        "ours gradcam+up+norm": lambda: normalise(
            upsample(cam_maps(score_fn, [layer], x, ["gradcam"])["gradcam"], tuple(x.shape[-2:]))
        ),
        "ours gradcam+gc++": lambda: cam_maps(score_fn, [layer], x, ["gradcam", "gradcam++"]),
        "captum batched": lambda: captum.attribute(x, target=targets, relu_attributions=True),
        "captum per image": lambda: torch.cat(
            [captum.attribute(x[i : i + 1], target=int(targets[i]), relu_attributions=True) for i in range(B)]
        ),
        "pgc GradCAM": lambda: pgc(GradCAM),
        "pgc GradCAM++": lambda: pgc(GradCAMPlusPlus),
    }
    out, times, calls = {}, {k: [] for k in methods}, {k: 0 for k in methods}
    for k, fn in methods.items():  # warm-up, and the outputs checked below
        out[k] = fn()
        sync()
    for _ in range(args.repeats):
        for k, fn in methods.items():
            n, start, elapsed = 0, time.perf_counter(), 0.0
            while elapsed < args.min_time:  # back to back: one slow call is one sample, fast ones are averaged
                fn()
                sync()
                n, elapsed = n + 1, time.perf_counter() - start
            times[k].append(elapsed / n)
            calls[k] += n
    rate = {k: B / statistics.median(v) for k, v in times.items()}
    model.zero_grad(set_to_none=True)

    from importlib.metadata import version

    print(
        f"{about}\ndevice {device}, batch {B}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"captum {version('captum')}, grad-cam {version('grad-cam')}"
    )
    if hasattr(os, "getloadavg"):
        print(f"load average {os.getloadavg()[0]:.2f} (other jobs on the machine skew the figures)")
    print(
        f"timing: 1 warm-up call each, then the MEDIAN of {args.repeats} rounds (methods interleaved); in a round "
        f"a method runs back to back for >= {args.min_time:g} s (calls in all: "
        f"{', '.join(str(c) for c in calls.values())}) and counts time per call"
    )
    print(
        "ours and captum return raw h x w maps; pgc's maps are upsampled to the input size and min-max "
        "normalised on the CPU (numpy/cv2),\npart of what its users pay; 'ours gradcam+up+norm' upsamples and "
        "normalises (by the peak) on the device\n"
    )
    base = rate["model fwd+bwd"]
    print(f"{'method':<21} {'img/s':>9} {'ms/batch':>10} {'/ fwd+bwd':>10}   {'ms/batch min..max':>17}")
    for k, r in rate.items():
        spread = f"{min(times[k]) * 1000:.1f}..{max(times[k]) * 1000:.1f}"
        print(f"{k:<21} {r:9.1f} {B / r * 1000:10.1f} {r / base:10.2f}   {spread:>17}")
    ratios = [
        ("gradcam", "ours gradcam", "captum batched"),
        ("gradcam", "ours gradcam", "captum per image"),
        ("gradcam", "ours gradcam", "pgc GradCAM"),
        ("gradcam++", "ours gradcam+gc++", "pgc GradCAM++"),
    ]
    print(f"\n{'ours / peer':<46} {'ratio':>7}")
    for what, ours, peer in ratios:
        note = "   (target >= 2x)" if peer.startswith("pgc") else ""
        print(f"{what:<10} {ours + ' / ' + peer:<35} {rate[ours] / rate[peer]:6.2f}x{note}")

    ours = out["ours gradcam+gc++"]
    print("\ncorrectness (on the warm-up outputs):")
    for peer in ("captum batched", "captum per image"):
        diff = (ours["gradcam"] - out[peer][:, 0]).abs().max().item()
        print(f"  gradcam   max |ours - {peer}| {diff:.2e}  (peak map value {ours['gradcam'].max().item():.2e})")
    size = tuple(x.shape[-2:])
    for method, peer in (("gradcam", "pgc GradCAM"), ("gradcam++", "pgc GradCAM++")):
        a = normalise(upsample(ours[method], size)).flatten(1).double().cpu()
        b = torch.from_numpy(out[peer]).flatten(1).double()
        ac, bc = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        corr = (ac * bc).sum(1) / (ac.norm(dim=1) * bc.norm(dim=1))
        ok = corr[~corr.isnan()] if not corr.isnan().all() else torch.full((1,), float("nan"))
        low, high = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
        minmax = (a - low) / (high - low + 1e-7)  # their last step: min-max of the upsampled map
        print(
            f"  {method:<9} vs {peer:<14} Pearson per image: min {ok.min().item():.6f}, "
            f"mean {ok.mean().item():.6f} ({corr.isnan().sum().item()} constant maps skipped)\n"
            f"  {'':<9}    {'':<14} max |diff|: ours normalised {(a - b).abs().max().item():.1e}, "
            f"min-max'd as theirs {(minmax - b).abs().max().item():.1e}"
        )
    print(
        "  (pgc GradCAM++ adds 1e-6 to the alpha denominator 2g^2 + sum(A) g^3, ours guards zeros only:\n"
        "   with small gradients (g^2 ~ 1e-6) that changes its weights, so ++ agrees less closely than gradcam)"
    )


if __name__ == "__main__":
    main()
