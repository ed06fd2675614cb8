"""The gradcam probe's faithfulness figures as estimates over the sampled images (auditor/stats.py).

A row is one thing explained, and an image may have several: the resampling draws images, keeping an
image's rows together (a mean over rows grouped by image), so that rows of one image, which are not
independent, do not narrow the interval."""

from __future__ import annotations

import torch

from auditor.probes.gradcam.faithfulness import Faithfulness, auc
from auditor.stats import Estimates, Ratio


def _by_image(values: torch.Tensor, image: torch.Tensor, n: int) -> Ratio:
    """The mean of per-row values, as sums and counts per image."""
    image = image.cpu().long()
    values = values.detach().cpu().double()
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, image, values)
    den = torch.zeros(n, dtype=torch.float64).index_add_(0, image, torch.ones_like(values))
    return Ratio(num, den)


def gradcam_estimates(faith: Faithfulness, primary: str, row_image: torch.Tensor, picked: torch.Tensor) -> Estimates:
    """The deletion / insertion and ROAD AUCs (the judged map's, each map's, the baselines'); row_image: the
    sampled image of each scored row; picked: the sample's indices in the data."""
    n = len(picked)
    est = Estimates(n, items=picked.tolist())
    row_image = row_image[: next(iter(next(iter(faith.curves.values())).values())).shape[0]]
    for name, modes in faith.curves.items():
        for mode, curves in modes.items():
            e = est.add(f"{mode}_auc@{name}", _by_image(auc(curves), row_image, n))
            if name == primary:
                est.add(f"{mode}_auc", e)
    for name, orders in faith.road.items():
        for order, curves in orders.items():
            e = est.add(f"road_{order}_auc@{name}", _by_image(auc(curves), row_image, n))
            if name == primary:
                est.add(f"road_{order}_auc", e)
    return est
