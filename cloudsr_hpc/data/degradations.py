"""Stage 2's synthetic degradation: HR patch -> perfectly aligned LR patch, drawn per sample.

Pipeline (each step configurable, see :class:`cloudsr_hpc.schema.DegradationConfig`):
  1. Gaussian PSF blur, sigma ~ U(blur_sigma_lr_px) in LR pixels (x scale in HR pixels);
  2. sub-pixel shift ~ U(-shift, shift) LR pixels in x and y (bilinear resampling);
  3. area-average downsampling by ``scale`` (what a detector of LR pixel size integrates);
  4. additive Gaussian noise, std ~ U(noise_std) in normalised units;
  5. optional quantisation onto ``quantisation_levels`` counts over [-1, 1];
  6. optional JPEG-like compression: 8x8 block DCT, coefficients quantised with a step that grows
     with spatial frequency and shrinks with ``jpeg_quality`` (blocking and ringing artefacts).
Inputs are normalised (C, H, W) tensors with a validity mask; invalid pixels never leak into
valid ones (blur is normalised by the blurred mask), and the LR mask is "all HR inputs valid".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..schema import DegradationConfig


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def correlate1d(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """Valid 1-D correlation of every line along ``dim`` with kernel ``k`` (length K): the output is
    K - 1 shorter.  A sum of K shifted slices, so memory stays two images wide whatever the size
    (a grouped conv2d unfolds K copies of a full-disk band on CPUs)."""
    n = x.shape[dim] - k.numel() + 1
    out = x.narrow(dim, 0, n) * k[0]
    for i in range(1, k.numel()):
        out = out.add_(x.narrow(dim, i, n), alpha=float(k[i]))
    return out


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N, C, H, W) tensor with reflect padding."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, x.device).to(x.dtype)
    r = (k.numel() - 1) // 2
    x = F.pad(x, (r, r, r, r), mode="reflect" if min(x.shape[-2:]) > r else "replicate")
    return correlate1d(correlate1d(x, k, -1), k, -2)


def shift(x: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Translate by (dx, dy) pixels (content moves right/down for positive values), bilinear."""
    n, _, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, -2.0 * dx / w], [0.0, 1.0, -2.0 * dy / h]], dtype=x.dtype,
                         device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def masked(op, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a linear op to masked data, renormalising by the op applied to the mask."""
    num = op(torch.where(mask > 0, x, torch.zeros_like(x)))
    den = op(mask.to(x.dtype))
    out = num / den.clamp_min(1e-6)
    return out, (den > 0.999).to(x.dtype)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix (rows = frequencies)."""
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def jpeg_like(x: torch.Tensor, quality: int, block: int = 8) -> torch.Tensor:
    """Quantise 8x8 block DCT coefficients of a (N, C, H, W) image in [-1, 1] (H, W padded to 8).

    Step = base * (1 + u + v) with base = 0.02 * (100 - quality) / 50: quality 50 gives the
    DC a step of 1 % of the range and the highest frequencies 15x that, like a JPEG table."""
    n, c, h, w = x.shape
    ph, pw = (-h) % block, (-w) % block
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
    d = _dct_matrix(block).to(x)
    blocks = xp.unfold(2, block, block).unfold(3, block, block)  # N,C,hb,wb,8,8
    coef = d @ blocks @ d.T
    u = torch.arange(block, device=x.device, dtype=x.dtype)
    step = 0.02 * (100 - quality) / 50 * (1 + u[:, None] + u[None, :])
    coef = torch.round(coef / step) * step
    rec = d.T @ coef @ d
    out = rec.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h + ph, w + pw)
    return out[..., :h, :w]


class Degradation:
    def __init__(self, cfg: DegradationConfig, scale: int):
        self.cfg, self.scale = cfg, scale

    def draw(self, g: torch.Generator) -> dict:
        """The random parameters of one sample (kept, so a test or a log can see them)."""
        c = self.cfg
        u = torch.rand(4, generator=g).tolist()
        return {"sigma_lr": c.blur_sigma_lr_px[0] + u[0] * (c.blur_sigma_lr_px[1] - c.blur_sigma_lr_px[0]),
                "dx_lr": (2 * u[1] - 1) * c.shift_lr_px, "dy_lr": (2 * u[2] - 1) * c.shift_lr_px,
                "noise": c.noise_std[0] + u[3] * (c.noise_std[1] - c.noise_std[0])}

    def __call__(self, hr: torch.Tensor, mask: torch.Tensor, g: torch.Generator,
                 params: dict | None = None,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(C, H, W) normalised HR + mask -> (C, H/s, W/s) LR + mask + the drawn parameters.

        ``noise`` (C, H/s, W/s), standard normal, replaces the generator's draw: a scene degraded
        band by band passes position-keyed noise so the bands join into one LR image."""
        p = params or self.draw(g)
        s = self.scale
        x, m = hr[None], mask[None].expand_as(hr[None])

        def linear(t):
            t = blur(t, p["sigma_lr"] * s)
            t = shift(t, p["dx_lr"] * s, p["dy_lr"] * s)
            return F.avg_pool2d(t, s)

        lr, lr_mask = masked(linear, x, m)
        eps = torch.randn(lr.shape, generator=g, dtype=lr.dtype) if noise is None else noise[None].to(lr)
        lr = lr + eps * p["noise"]
        if self.cfg.quantisation_levels:
            q = (self.cfg.quantisation_levels - 1) / 2.0
            lr = torch.round((lr.clamp(-1, 1) + 1) * q) / q - 1
        if self.cfg.jpeg_quality:
            lr = jpeg_like(lr, self.cfg.jpeg_quality)
        lr = torch.where(lr_mask > 0, lr, torch.zeros_like(lr))
        return lr[0], lr_mask[0], p
