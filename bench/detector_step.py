"""Attack step cost on torchvision's detectors: the probe's objective versus the model's own forward+backward.

Prints, per detector (random weights, which cost what trained ones cost), milliseconds per image for

- model fwd+bwd: the model as it predicts (eval mode), and a backward from everything its heads computed down
  to the input: what any gradient attack on this model has to pay per step;
- attack step: the attacks probe's step, the gradient of the adapter's `objective` (the model's own training
  losses for the reference boxes) with respect to the input, at the same input size; for two-stage models also
  the step as it was before the objective kept the predicting proposal budgets ("training budgets");
- ART: the peer's per-step gradient where it has one for this model (ART's PyTorchFasterRCNN estimator
  wraps torchvision's Faster R-CNN: `loss_gradient`), measured in the same run;

and the ratio (attack step) / (model fwd+bwd), which the issue asks to keep at or under 1.5.

    python bench/detector_step.py [--batch 4] [--boxes 3] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from attack_step import timed  # bench/ is the script's folder, first on the path

from auditor.models import torchvision_detect
from auditor.models.base import ModelFacts, Preprocess
from auditor.models.torchvision_detect import TorchvisionDetectorAdapter

DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn")


def adapter_for(name: str, size: int) -> TorchvisionDetectorAdapter:
    import torchvision

    torch.manual_seed(0)
    kwargs = {"weights": None, "weights_backbone": None}
    net = torchvision.models.get_model(name, **kwargs, num_classes=91)
    return TorchvisionDetectorAdapter(
        net,
        facts=ModelFacts(name=name, source="torchvision"),
        class_names=[str(i) for i in range(91)],
        input_size=(size, size),
        channels=3,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        preprocess=Preprocess(resize=size),
        epsilons=("4/255",),
    ).eval()


def head_outputs(adapter: TorchvisionDetectorAdapter, out) -> torch.Tensor:
    """One scalar over everything the heads computed (and the detections kept), so its backward covers the whole
    forward graph down to the input."""
    tap = out.tap
    parts = [d["scores"].sum() + d["boxes"].sum() * 0 for d in out]
    if adapter.stages == 2:
        parts += [tap.class_logits.sum(), tap.box_regression.sum()]
    else:
        parts += [v.sum() for v in tap.head.values()]
    return sum(parts)


def references(batch: int, boxes: int, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Per image `boxes` random boxes (class, x1, y1, x2, y2) of a sixth to a half of the side."""
    out = []
    for _ in range(batch):
        wh = torch.rand(boxes, 2, generator=g) * (size / 3) + size / 6
        xy = torch.rand(boxes, 2, generator=g) * (size - wh)
        cls = torch.randint(1, 91, (boxes, 1), generator=g).float()
        out.append(torch.cat([cls, xy, xy + wh], 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--boxes", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)  # the audit's input size for torchvision detectors
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=",".join(DETECTORS))
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"device {device}, batch {args.batch} at {args.size} px, {args.boxes} reference boxes per image, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    refs = [r.to(device) for r in references(args.batch, args.boxes, args.size, g)]
    for name in args.models.split(","):
        adapter = adapter_for(name, args.size).to(device)

        def fwd_bwd():
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(head_outputs(adapter, adapter(xr)), xr)

        def attack_step():
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(adapter.objective(xr, refs).sum(), xr)

        results = {"model fwd+bwd": timed(fwd_bwd, args.repeats, sync)}
        results["attack step"] = timed(attack_step, args.repeats, sync)
        if adapter.stages == 2:  # the step as it was: train mode's own proposal budgets (2,000 per image)
            with training_budgets():
                results["(training budgets)"] = timed(attack_step, args.repeats, sync)
        if name.startswith("fasterrcnn"):
            results.update(art_step(adapter, x, refs, args.repeats, sync))
        base = results["model fwd+bwd"]
        print(f"\n{name}")
        for k, v in results.items():
            print(f"  {k:<20} {v * 1000 / args.batch:9.1f} ms/image   ratio to fwd+bwd {v / base:5.2f}")


@contextlib.contextmanager
def training_budgets():
    """The adapter's objective without its fix: the region proposal network keeps train mode's budgets."""
    saved = torchvision_detect._predicting_proposal_budgets
    torchvision_detect._predicting_proposal_budgets = lambda net: lambda: None
    try:
        yield
    finally:
        torchvision_detect._predicting_proposal_budgets = saved


def art_step(adapter, x, refs, repeats, sync) -> dict[str, float]:
    """ART's loss gradient for the same Faster R-CNN and boxes (its estimator runs the model in train mode too)."""
    try:
        from art.estimators.object_detection import PyTorchFasterRCNN
    except ImportError:
        return {}
    est = PyTorchFasterRCNN(
        model=adapter.net,
        clip_values=(0.0, 1.0),
        channels_first=True,
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    x_np = x.cpu().numpy()
    y = [{"boxes": r[:, 1:5].cpu().numpy(), "labels": r[:, 0].long().cpu().numpy()} for r in refs]
    try:
        return {"ART loss_gradient": timed(lambda: est.loss_gradient(x_np, y), repeats, sync)}
    except Exception as exc:  # the peer is measured where it runs; say why not otherwise
        print(f"  (ART's PyTorchFasterRCNN.loss_gradient failed: {type(exc).__name__}: {exc})")
        return {}


if __name__ == "__main__":
    main()
