"""Masked training losses: MSE on x0, plus optional gradient and spectral terms.

The gradient term penalises the difference of finite differences (aimed at the paper's
gradient-preservation ratio ~ 1: MSE alone rewards blur); the spectral term compares log FFT
amplitudes, so missing high-wavenumber power costs as much as misplaced power.
"""
from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.expand_as(pred)
    return ((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1.0)


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 between finite differences, on pixel pairs that are both valid."""
    total, count = pred.new_zeros(()), pred.new_zeros(())
    for dim in (-1, -2):
        dp, dt = pred.diff(dim=dim), target.diff(dim=dim)
        m = (mask.narrow(dim, 1, mask.shape[dim] - 1)
             * mask.narrow(dim, 0, mask.shape[dim] - 1)).expand_as(dp)
        total = total + ((dp - dt).abs() * m).sum()
        count = count + m.sum()
    return total / count.clamp_min(1.0)


def spectral_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 between log amplitude spectra of the masked images."""
    fp = torch.fft.rfft2(pred * mask).abs()
    ft = torch.fft.rfft2(target * mask).abs()
    return (torch.log1p(fp) - torch.log1p(ft)).abs().mean()


def total_loss(pred, target, mask, grad_weight: float = 0.0,
               spectral_weight: float = 0.0) -> dict[str, torch.Tensor]:
    parts = {"mse": masked_mse(pred, target, mask)}
    if grad_weight:
        parts["grad"] = gradient_loss(pred, target, mask)
    if spectral_weight:
        parts["spectral"] = spectral_loss(pred, target, mask)
    parts["loss"] = (parts["mse"] + grad_weight * parts.get("grad", 0.0)
                     + spectral_weight * parts.get("spectral", 0.0))
    return parts
