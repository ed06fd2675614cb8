"""The gradcam probe's faithfulness figures as estimates over the sampled images (auditor/stats.py).

A row is one thing explained, and an image may have several: the resampling draws images, keeping an
image's rows together (a mean over rows grouped by image), so that rows of one image, which are not
independent, do not narrow the interval."""

from __future__ import annotations

import torch

from auditor.probes.gradcam.faithfulness import Faithfulness, auc
from auditor.probes.gradcam.localisation import energy_in_object, frame_mask, pointing_hits, pointing_tolerance
from auditor.stats import Estimates, Ratio


def _by_image(values: torch.Tensor, image: torch.Tensor, n: int, finite: bool = False, hits: bool = False) -> Ratio:
    """The mean of per-row values, as sums and counts per image (finite: rows with a NaN value do not count;
    hits: the values are 0 or 1, so the mean is a proportion of rows)."""
    image = image[: len(values)].cpu().long()
    values = values.detach().cpu().double()
    counted = torch.isfinite(values).double() if finite else torch.ones_like(values)
    values = torch.where(counted > 0, values, 0.0)
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, image, values)
    den = torch.zeros(n, dtype=torch.float64).index_add_(0, image, counted)
    return Ratio(num, den, proportion=hits)


def gradcam_estimates(
    faith: Faithfulness, primary: str, maps: torch.Tensor, objects, row_image: torch.Tensor, picked: torch.Tensor
) -> Estimates:
    """The deletion / insertion and ROAD AUCs (the judged map's, each map's, the baselines'), and where the judged
    maps (rows x H x W) fall: on the ground-truth objects (objects: localisation.row_objects'), in the border.
    row_image: the sampled image of each row; picked: the sample's indices in the data."""
    n = len(picked)
    est = Estimates(n, items=picked.tolist())
    _where(est, maps, objects, row_image, n)
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


def _where(est: Estimates, maps: torch.Tensor, objects, row_image: torch.Tensor, n: int) -> None:
    size = tuple(maps.shape[-2:])
    frame = frame_mask(*size, maps.device).expand_as(maps)
    est.add("border_energy", _by_image(energy_in_object(maps, frame), row_image, n, finite=True))
    if objects is None or not objects[1].any():
        return
    obj, known = objects
    on = torch.full((len(maps),), float("nan"), dtype=torch.float64)
    hit = on.clone()
    on[known.cpu()] = energy_in_object(maps[known], obj[known]).cpu().double()
    hit[known.cpu()] = pointing_hits(maps[known], obj[known], pointing_tolerance(size)).cpu().double()
    est.add("energy_in_object", _by_image(on, row_image, n, finite=True))
    est.add("pointing_game", _by_image(hit, row_image, n, finite=True, hits=True))
