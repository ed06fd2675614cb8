"""PGD step throughput: the project's attack engine versus the model's own forward+backward and peers.

Prints, for each model, seconds per PGD iteration on one batch and the ratio
(model fwd+bwd time) / (attack step time), where fwd+bwd is a forward and a backward to
the input only: 1.0 means the attack adds nothing on top of the gradient it needs. Peers measured in the same run: a plain torch
loop, the probe's own engine (auditor/probes/attacks/engine.py), captum.robust's PGD, ART's
ProjectedGradientDescent, and torchattacks' PGD (installed with the test extra).

    python bench/attack_step.py [--device cpu|cuda] [--batch 16] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from auditor.probes.attacks.engine import LinfAttack


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def models(device):
    import torchvision

    from auditor.models import ModelSpec, load_model
    from auditor.models.base import ClassifierAdapter, ModelFacts, Preprocess

    yield "digits-cnn 1x28x28", load_model(ModelSpec(model="digits-cnn")), (1, 28, 28)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=1000)
    adapter = ClassifierAdapter(
        net,
        facts=ModelFacts(name="resnet18", source="torchvision"),
        class_names=[str(i) for i in range(1000)],
        input_size=(224, 224),
        channels=3,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        preprocess=Preprocess(resize=224),
        epsilons=("4/255",),
    )
    yield "resnet18 3x224x224 (random weights)", adapter, (3, 224, 224)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    eps, steps = 4 / 255, args.steps
    alpha = 2.5 * eps / steps
    print(
        f"device {device}, batch {args.batch}, {steps} PGD steps, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    for name, model, shape in models(device):
        model = model.to(device).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, *shape, generator=g).to(device)
        y = torch.randint(0, model.num_classes, (args.batch,), generator=g).to(device)

        def fwd_bwd():
            # What one attack step cannot avoid: a forward and a backward down to the input.
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xr), y), xr)

        def fwd_bwd_all():
            xr = x.clone().requires_grad_(True)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xr), y).backward()

        def plain_pgd():
            adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(steps):
                adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
                adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)

        results = {
            "model fwd+bwd": timed(fwd_bwd, args.repeats, sync),
            "(+ weight grads)": timed(fwd_bwd_all, args.repeats, sync),
        }
        results["plain torch PGD"] = timed(plain_pgd, args.repeats, sync) / steps

        # the probe's engine; early stopping off, so that every image takes every step (random labels
        # on random weights are "misclassified" at once and would leave the batch)
        engine = LinfAttack(model, steps=steps, early_stop=False)
        results["auditor PGD"] = timed(lambda: engine.pgd(x, y, eps), args.repeats, sync) / steps

        from captum.robust import PGD as CaptumPGD

        cap = CaptumPGD(model, torch.nn.CrossEntropyLoss(reduction="none"), lower_bound=0.0, upper_bound=1.0)
        results["captum.robust PGD"] = (
            timed(
                lambda: cap.perturb(x, radius=eps, step_size=alpha, step_num=steps, target=y, random_start=True),
                args.repeats,
                sync,
            )
            / steps
        )

        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        est = PyTorchClassifier(
            model=model,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=shape,
            nb_classes=model.num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        art_pgd = ProjectedGradientDescent(
            est,
            norm=np.inf,
            eps=eps,
            eps_step=alpha,
            max_iter=steps,
            num_random_init=1,
            batch_size=args.batch,
            verbose=False,
        )
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        results["ART PGD"] = timed(lambda: art_pgd.generate(x=x_np, y=y_np), args.repeats, sync) / steps
        try:
            import torchattacks

            ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
            results["torchattacks PGD"] = timed(lambda: ta(x, y), args.repeats, sync) / steps
        except ImportError:
            pass
        base, ours = results["model fwd+bwd"], results["auditor PGD"]
        print(f"\n{name}")
        for k, v in results.items():
            print(f"  {k:<18} {v * 1000:9.2f} ms/step   ratio to fwd+bwd {base / v:5.2f}   auditor is {v / ours:5.2f}x")


if __name__ == "__main__":
    main()
