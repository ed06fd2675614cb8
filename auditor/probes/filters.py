"""`filters`: the first convolution's weights as an image grid ("weights visualisation").

Informational, so no score. Shows what the first layer responds to: edge and colour
detectors in a healthy network, noise or near-zero (dead) kernels in a troubled one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from auditor.models.base import TASKS
from auditor.probes.base import Context, Probe
from auditor.results import Finding, ProbeResult

DEAD_SHARE_OF_MAX_NORM = 1e-2


def first_conv(net: nn.Module) -> tuple[str, torch.Tensor]:
    for name, module in net.named_modules():
        # TorchScript modules keep the class name in original_name rather than their type.
        if isinstance(module, nn.Conv2d) or getattr(module, "original_name", None) == "Conv2d":
            return name, module.weight
    # Exported graphs keep parameters but not module types: the first 4-D weight is the first conv.
    for name, param in net.named_parameters():
        if param.dim() == 4 and name.endswith("weight"):
            return name.removesuffix(".weight"), param
    raise ValueError("the model has no Conv2d layer, so there are no filters to show")


class FiltersProbe(Probe):
    name = "filters"
    description = "first conv layer's weights as an image grid (weights visualisation)"
    tasks = TASKS

    @dataclass
    class Params:
        max_filters: int = 64  # the grid shows the first N filters

    def run(self, ctx: Context) -> ProbeResult:
        bar = ctx.progress(1, self.name)
        layer, weight = first_conv(ctx.adapter.net)
        w = weight.detach().float().cpu()
        out_c, in_c, kh, kw = w.shape
        norms = w.flatten(1).norm(dim=1)
        dead = int((norms < DEAD_SHARE_OF_MAX_NORM * norms.max()).sum()) if norms.max() > 0 else out_c
        shown = w[: self.params.max_filters]
        # One tile per filter: RGB when the layer sees colour, else the channel mean in grey.
        tiles = shown if in_c == 3 else shown.mean(dim=1, keepdim=True)
        # Symmetric scaling per filter keeps zero at mid-grey, so sign is visible.
        peak = tiles.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        tiles = tiles / (2 * peak) + 0.5
        path, rel = ctx.artifact("filters.png")
        from auditor.figures import save_tile_grid

        save_tile_grid(tiles, path)
        bar.update(1)
        bar.close()
        findings = [Finding("info", f"{layer}: {out_c} filters of {in_c}x{kh}x{kw}; "
                                    f"{'RGB tiles' if in_c == 3 else 'grey tiles (mean over input channels)'}, "
                                    f"mid-grey = 0, each filter scaled to its own peak")]
        if dead:
            findings.append(Finding("medium", f"{dead} of {out_c} filters have near-zero weights "
                                              f"(norm under {DEAD_SHARE_OF_MAX_NORM:.0%} of the largest): dead filters"))
        return ProbeResult(status="ok", score=None,
                           metrics={"filters": float(out_c), "dead_filters": float(dead)},
                           findings=tuple(findings), artifacts=(rel,),
                           details={"layer": layer, "shape": [out_c, in_c, kh, kw], "shown": len(shown),
                                    "captions": {rel: f"First-layer filters ({layer})"}})
