import numpy as np
import torch

from cloudsr_hpc.data.degradations import Degradation, blur, shift
from cloudsr_hpc.schema import DegradationConfig


def _hr(seed=0, c=2, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, n, n, generator=g) * 2 - 1


def test_downsampling_is_area_average_without_blur_shift_noise():
    d = Degradation(DegradationConfig(blur_sigma_lr_px=(0, 0), shift_lr_px=0, noise_std=(0, 0)), 4)
    hr = _hr()
    lr, m, _ = d(hr, torch.ones_like(hr), torch.Generator().manual_seed(0))
    assert lr.shape == (2, 16, 16) and bool(m.all())
    assert torch.allclose(lr, hr.reshape(2, 16, 4, 16, 4).mean((2, 4)), atol=1e-6)


def test_same_generator_same_sample_and_params_in_range():
    cfg = DegradationConfig(blur_sigma_lr_px=(0.4, 0.8), shift_lr_px=0.25, noise_std=(0.0, 0.02), quantisation_levels=1024)
    d = Degradation(cfg, 4)
    hr = _hr()
    a = d(hr, torch.ones_like(hr), torch.Generator().manual_seed(7))
    b = d(hr, torch.ones_like(hr), torch.Generator().manual_seed(7))
    c = d(hr, torch.ones_like(hr), torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    p = a[2]
    assert 0.4 <= p["sigma_lr"] <= 0.8 and abs(p["dx_lr"]) <= 0.25 and 0 <= p["noise"] <= 0.02
    levels = (a[0] + 1) * (1023 / 2)
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # quantised onto 1024 counts


def test_blur_preserves_mean_and_reduces_gradients():
    hr = _hr()[None]
    b = blur(hr, 2.0)
    assert abs(float(b.mean() - hr.mean())) < 0.01
    assert float(b.diff(dim=-1).abs().mean()) < 0.5 * float(hr.diff(dim=-1).abs().mean())


def test_shift_moves_content():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1
    y = shift(x, 2.0, -1.0)
    assert torch.nonzero(y[0, 0] > 0.99).tolist() == [[7, 10]]


def test_invalid_pixels_do_not_leak_into_valid_ones():
    d = Degradation(DegradationConfig(blur_sigma_lr_px=(0.6, 0.6), shift_lr_px=0, noise_std=(0, 0)), 4)
    hr = _hr()
    mask = torch.ones_like(hr)
    mask[:, :, :20] = 0
    poisoned = torch.where(mask > 0, hr, torch.full_like(hr, 1e6))
    lr, m, _ = d(poisoned, mask, torch.Generator().manual_seed(0))
    assert float(lr.abs().max()) < 2  # the 1e6 never reaches a valid output
    assert not bool(m[:, :, 0].any()) and bool(m[:, :, -1].all())
    assert np.isfinite(lr.numpy()).all()
