"""`filters`: the first convolution's weights as an image grid ("weights visualisation").

Informational, so no score. Shows what the first layer responds to: edge and colour
detectors in a healthy network, noise or near-zero (dead) kernels in a troubled one; and
names the filters that waste capacity: dead ones, and near-identical copies of another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from auditor.figures import save_tile_grid
from auditor.probes.base import Context, Probe
from auditor.results import Finding, ProbeResult
from auditor.tasks import TASKS

DEAD_SHARE_OF_MAX_NORM = 1e-2
# Cosine of two flattened filters from which they count as copies. Chance does not get there: two
# independent random filters reach it with probability ~1e-5 in the smallest common kernel (1x3x3,
# 9 dimensions) and ~1e-14 at 3x3x3, so a pair above it is redundancy. Yet it is loose enough (18
# degrees apart) to catch copies that training has nudged a little apart.
DUPLICATE_COSINE = 0.95
NAMED = 5  # findings name the first few filters or pairs
TABLE_ROWS = 24  # the report's table of dead and duplicate filters lists at most this many rows
DEAD_FRAME, DUPLICATE_FRAME = (214, 39, 40), (255, 127, 14)  # matplotlib's tab10 red and orange


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


def similar_pairs(w: torch.Tensor, live: torch.Tensor) -> tuple[list, list]:
    """Pairs (i, j, cosine), i < j, of live filters: near-identical ones and sign-flipped ones.

    One matrix product of the unit-norm flattened filters gives every pair's cosine at once.
    Dead filters are left out: a near-zero vector's direction is noise.
    """
    flat = w.flatten(1).double()
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    candidates = torch.triu(live[:, None] & live[None, :], diagonal=1)

    def listed(mask: torch.Tensor) -> list[tuple[int, int, float]]:
        i, j = mask.nonzero(as_tuple=True)
        order = cos[i, j].abs().argsort(descending=True, stable=True)  # closest pairs first
        return [(int(i[k]), int(j[k]), float(cos[i[k], j[k]])) for k in order]

    return listed(candidates & (cos >= DUPLICATE_COSINE)), listed(candidates & (cos <= -DUPLICATE_COSINE))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pairs_text(pairs: list[tuple[int, int, float]]) -> str:
    text = ", ".join(f"{i} and {j} ({c:.2f})" for i, j, c in pairs[:NAMED])
    return text + (f" and {len(pairs) - NAMED} more" if len(pairs) > NAMED else "")


@dataclass
class FlaggedFilter:
    """A filter that wastes capacity: dead, or a near-identical copy of another (its partner)."""

    filter: int
    issue: str  # dead | duplicate
    norm: float
    partner: int | None = None
    cosine: float | None = None


@dataclass
class FiltersDetails:
    layer: str
    shape: list[int]  # out x in x kh x kw
    shown: int  # filters in the grid
    # The checks, in runs saved since they exist (None in older ones):
    max_norm: float | None = None
    dead_share: float | None = None
    duplicate_cosine: float | None = None
    flagged: list[FlaggedFilter] | None = None  # the report's table: at most TABLE_ROWS
    flagged_total: int | None = None
    captions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FiltersDetails:
        flagged = d.get("flagged")
        return cls(
            **{k: v for k, v in d.items() if k != "flagged"},
            flagged=None if flagged is None else [FlaggedFilter(**r) for r in flagged],
        )


@dataclass
class FilterChecks:
    """Dead filters and similar pairs over the whole layer."""

    norms: torch.Tensor  # each filter's weight norm
    dead: list[int]
    duplicates: list[tuple[int, int, float]]  # (i, j, cosine), closest first
    opposites: list[tuple[int, int, float]]
    paired: set[int]  # filters with a near-identical partner

    @classmethod
    def of(cls, w: torch.Tensor) -> FilterChecks:
        norms = w.flatten(1).norm(dim=1)
        dead = norms < DEAD_SHARE_OF_MAX_NORM * norms.max() if norms.max() > 0 else torch.ones(len(w), dtype=torch.bool)
        duplicates, opposites = similar_pairs(w, ~dead)
        paired = {i for pair in duplicates for i in pair[:2]}
        return cls(norms, dead.nonzero().flatten().tolist(), duplicates, opposites, paired)

    def rows(self) -> list[FlaggedFilter]:
        return [FlaggedFilter(i, "dead", float(self.norms[i])) for i in self.dead] + [
            FlaggedFilter(i, "duplicate", float(self.norms[i]), j, c) for i, j, c in self.duplicates
        ]


class FiltersProbe(Probe):
    name = "filters"
    template = "probes/filters.html.j2"
    report_order = 60
    description = "first conv layer's weights as an image grid (weights visualisation); dead and duplicate filters"
    tasks = tuple(TASKS)
    # filters: how many the layer has; opposite_pairs: sign-flipped pairs, usual and no defect
    lower_is_better = ("dead_filters", "duplicate_filters", "duplicate_pairs")
    no_direction = ("filters", "opposite_pairs")

    @dataclass
    class Params:
        max_filters: int = 64  # the grid shows the first N filters; the checks cover all of them

        def __post_init__(self):
            if self.max_filters < 1:
                raise ValueError(f"max_filters must be at least 1, got {self.max_filters}")

    @classmethod
    def view(cls, details) -> FiltersDetails:
        return FiltersDetails.from_dict(details)

    def run(self, ctx: Context) -> ProbeResult:
        bar = ctx.progress(1, self.name)
        layer, weight = first_conv(ctx.adapter.net)
        w = weight.detach().float().cpu()
        out_c, in_c, kh, kw = w.shape
        checks = FilterChecks.of(w)
        shown = w[: self.params.max_filters]
        path, rel = ctx.artifact("filters.png")
        if ctx.main:  # a sharded run's other ranks compute the same and write nothing
            draw_filters(shown, checks, path)
        bar.update(1)
        bar.close()

        colour = {3: "RGB tiles", 1: "grey tiles"}.get(in_c, f"grey tiles (mean over the {in_c} input channels)")
        findings = [
            Finding(
                "info",
                f"layer {layer}: {out_c} filters of {in_c}x{kh}x{kw}; {colour}, mid-grey = 0, "
                f"each filter scaled to its own peak"
                + (f"; the grid shows the first {len(shown)}" if len(shown) < out_c else ""),
            )
        ] + check_findings(checks, out_c)
        rows = checks.rows()
        caption = (
            f"First-layer filters ({layer}), {len(shown)} of {out_c}, {colour}; the number under each is its "
            f"index; frames: red = dead, orange = has a near-identical partner"
        )
        details = FiltersDetails(
            layer=layer,
            shape=[out_c, in_c, kh, kw],
            shown=len(shown),
            max_norm=float(checks.norms.max()),
            dead_share=DEAD_SHARE_OF_MAX_NORM,
            duplicate_cosine=DUPLICATE_COSINE,
            flagged=rows[:TABLE_ROWS],
            flagged_total=len(rows),
            captions={rel: caption},
        )
        metrics = {
            "filters": float(out_c),
            "dead_filters": float(len(checks.dead)),
            "duplicate_filters": float(len(checks.paired)),
            "duplicate_pairs": float(len(checks.duplicates)),
            "opposite_pairs": float(len(checks.opposites)),
        }
        return ProbeResult(
            status="ok",
            score=None,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=(rel,),
            details=details.to_dict(),
        )


def draw_filters(shown: torch.Tensor, checks: FilterChecks, path) -> None:
    """One tile per filter: RGB when the layer sees colour, else the channel mean in grey; framed when flagged."""
    tiles = shown if shown.shape[1] == 3 else shown.mean(dim=1, keepdim=True)
    # Symmetric scaling per filter keeps zero at mid-grey, so sign is visible.
    peak = tiles.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    tiles = tiles / (2 * peak) + 0.5
    dead = set(checks.dead)
    frames = [DEAD_FRAME if i in dead else DUPLICATE_FRAME if i in checks.paired else None for i in range(len(shown))]
    save_tile_grid(tiles, path, tile_px=48, labels=[str(i) for i in range(len(shown))], frames=frames)


def check_findings(checks: FilterChecks, out_c: int) -> list[Finding]:
    findings = []
    if checks.dead:
        listed = ", ".join(map(str, checks.dead[:NAMED])) + (" …" if len(checks.dead) > NAMED else "")
        findings.append(
            Finding(
                "medium",
                f"{len(checks.dead)} of {out_c} filters dead (weight norm under "
                f"{DEAD_SHARE_OF_MAX_NORM:.0%} of the largest): {listed}",
                key=True,
            )
        )
    if checks.duplicates:
        findings.append(
            Finding(
                "medium",
                f"{_count(len(checks.duplicates), 'pair')} of near-identical filters "
                f"(cosine ≥ {DUPLICATE_COSINE}; {len(checks.paired)} of {out_c} filters): "
                f"filters {_pairs_text(checks.duplicates)}. Each pair detects one pattern twice",
                key=True,
            )
        )
    if checks.opposites:
        findings.append(
            Finding(
                "info",
                f"{_count(len(checks.opposites), 'sign-flipped pair')} "
                f"(cosine ≤ -{DUPLICATE_COSINE}): filters {_pairs_text(checks.opposites)}. "
                f"Usual in early layers, which often learn both polarities of an edge "
                f"(as CReLU does by design); not a defect",
            )
        )
    if not checks.dead and not checks.duplicates:
        findings.append(Finding("info", f"no dead or near-duplicate filters among all {out_c}"))
    return findings
