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
    cfg = DegradationConfig(blur_sigma_lr_px=(0.4, 0.8), shift_lr_px=0.25, noise_std=(0.0, 0.02),
                            quantisation_levels=1024)
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


def test_jpeg_like_compression_is_blockwise_and_quality_controlled():
    from cloudsr_hpc.data.degradations import jpeg_like
    g = torch.Generator().manual_seed(0)
    x = blur(torch.rand(1, 1, 32, 40, generator=g) * 2 - 1, 1.5)
    hi, lo = jpeg_like(x, 95), jpeg_like(x, 10)
    err_hi, err_lo = (hi - x).abs().mean().item(), (lo - x).abs().mean().item()
    assert err_hi < err_lo and err_hi < 0.01 and err_lo > 0.01
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert torch.allclose(jpeg_like(flat, 50), flat, atol=0.02)  # a flat block keeps its mean (DC)
    # blocking: jumps across 8-px block borders exceed those inside blocks at low quality
    dx = (lo[..., 1:] - lo[..., :-1]).abs().mean(dim=(0, 1, 2))
    border = dx[7::8].mean()
    inside = torch.cat([dx[i::8] for i in range(7)]).mean()
    assert border > inside


def test_degradation_pipeline_applies_jpeg_when_configured():
    hr = _hr()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    base = DegradationConfig(blur_sigma_lr_px=(0.5, 0.5), shift_lr_px=0, noise_std=(0, 0))
    plain = Degradation(base, 4)(hr, torch.ones_like(hr), g())[0]
    jp = Degradation(DegradationConfig(blur_sigma_lr_px=(0.5, 0.5), shift_lr_px=0, noise_std=(0, 0),
                                       jpeg_quality=20),
                     4)(hr, torch.ones_like(hr), g())[0]
    assert not torch.allclose(plain, jp) and (plain - jp).abs().mean() < 0.2


def test_cascade_conditions_keep_mid_scales_and_damp_the_finest():
    """Stage 2's cascade-like conditions sit between bicubic(LR) and the HR: sharper than the
    former, smoother than the latter; p = 0 leaves every condition alone."""
    import torch.nn.functional as F

    from cloudsr_hpc.evaluation.metrics import gradient_ratio
    from cloudsr_hpc.models.cascade import upsample_condition
    from cloudsr_hpc.training.trainer import cascade_conditions
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 64, 64, generator=g) * 2 - 1
    x0 = blur(x0, 1.0)  # some spatial correlation
    y, m = upsample_condition(F.avg_pool2d(x0, 4), torch.ones(4, 2, 16, 16), 4)
    assert torch.equal(cascade_conditions(x0, y, m, 0.0, 4, torch.Generator().manual_seed(1)), y)
    c = cascade_conditions(x0, y, m, 1.0, 4, torch.Generator().manual_seed(1))
    assert gradient_ratio(y, x0, m) < gradient_ratio(c, x0, m) < 1.0
