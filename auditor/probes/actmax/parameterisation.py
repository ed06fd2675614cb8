"""The images actmax optimises: a Fourier parameterisation in decorrelated colour, and the jitter every step sees.

Mordvintsev, Pezzotti, Schubert & Olah (2018), "Differentiable Image Parameterizations",
Distill, doi:10.23915/distill.00012: each image is a learnable Fourier spectrum scaled by
1/frequency (so steps favour low frequencies instead of the high-frequency patterns a pixel
parameterisation drifts into); 3-channel images go through ImageNet's colour-correlation
square root, so the optimiser works in decorrelated colour; a sigmoid keeps pixels in
[0, 1]. Every step sees a random translation, scale and rotation of each image
(transformation robustness, Olah et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Square root (via SVD) of ImageNet's RGB colour correlation, as published with Lucid; columns
# scaled so the largest has norm 1, which keeps a unit step in decorrelated space a unit step in RGB.
COLOUR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR = COLOUR_SVD_SQRT / COLOUR_SVD_SQRT.norm(dim=0).max()
INIT_SD = 0.01  # spectrum at the start: a faint low-frequency noise around mid-grey
# The image is half the inverse FFT. Adam's steps have a fixed size in the spectrum, so this sets
# the pace: at lr 0.05, full size left high-frequency speckle on shapes-unet; Lucid's quarter, made
# for 512+ steps, left more of shapes-yolov8n's deepest channels below what real images reach
# within AUTO_STEPS (channel_gain 1.78 vs 2.04 at half).
IMAGE_SCALE = 0.5
SHIFT = 1 / 16  # translation up to this share of the side (8 px at 128, as Lucid's jitter)
SCALES = (0.9, 1.1)
DEGREES = 10.0


class FourierImage:
    """A batch of images parameterised by learnable spectra, scaled by 1/frequency.

    pixels = sigmoid(colour @ (IMAGE_SCALE * irfft2(spectrum * scale))), with the orthonormal
    inverse FFT, so that a unit of spectrum is a unit of image; 3 channels go through the colour
    matrix (decorrelated -> RGB), other channel counts straight to the sigmoid.
    """

    def __init__(
        self,
        n: int,
        channels: int,
        size: tuple[int, int],
        generator: torch.Generator,
        device: torch.device,
        rows: slice | None = None,
    ):
        """n images drawn from the generator; `rows`: the ones kept (a rank's share of a sharded batch)."""
        h, w = size
        fy = torch.fft.fftfreq(h, device=device)[:, None]
        fx = torch.fft.rfftfreq(w, device=device)[None, :]
        # the constant term would get an infinite weight; it is capped at the lowest frequency's
        self.scale = 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
        self.size = size
        self.colour = COLOUR.to(device) if channels == 3 else None
        self.spectrum = (
            INIT_SD
            * torch.randn(n, channels, h, w // 2 + 1, 2, generator=generator, device=device)[rows or slice(None)]
        ).requires_grad_(True)

    def linear(self) -> torch.Tensor:
        """The image before the sigmoid."""
        image = IMAGE_SCALE * torch.fft.irfft2(
            torch.view_as_complex(self.spectrum) * self.scale, s=self.size, norm="ortho"
        )
        if self.colour is not None:
            image = torch.einsum("ij,njhw->nihw", self.colour, image)
        return image

    def __call__(self) -> torch.Tensor:
        return torch.sigmoid(self.linear())


def transform(images: torch.Tensor, generator: torch.Generator, n: int | None = None, rows: slice | None = None):
    """Each image translated, scaled and rotated at random (one draw per image), grey where it leaves the frame.

    `images` may be the rows `rows` of a batch of n: the draws are the whole batch's, each image takes its own."""
    n = len(images) if n is None else n
    u = torch.rand(n, 4, generator=generator, device=images.device)[rows or slice(None)]
    n = len(u)
    angle = torch.deg2rad((2 * u[:, 0] - 1) * DEGREES)
    zoom = SCALES[0] + (SCALES[1] - SCALES[0]) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * 2 * SHIFT  # affine_grid's coordinates span 2 per side
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # sampling the image minus grey, zeros outside, then adding grey back: a grey surround, as Lucid pads
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
