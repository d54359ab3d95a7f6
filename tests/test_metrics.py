"""Metrics against hand-computed cases, NaN handling, and LPIPS plumbing against the lpips package."""
import math

import pytest
import torch

from cloudsr_hpc.data.degradations import blur
from cloudsr_hpc.evaluation import metrics as M
from cloudsr_hpc.evaluation.metrics import gradient_ratio, psnr


def _img(seed=0, n=2, c=3, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def _field(seed=0, size=128):
    """A red-noise (k^-3 power) image: structure at every scale, like a cloud field."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    k = torch.hypot(f[:, None], f[None, :]).clamp_min(1 / size)
    spec = torch.fft.fft2(torch.randn(size, size, generator=g)) * k ** -1.5
    x = torch.fft.ifft2(spec).real
    return ((x - x.mean()) / x.std() * 0.4).clamp(-1, 1)[None, None]


def _spectrum_ratio(pred, target, mask, scale=4, tile=64):
    sp, st, n = M.spectrum_tiles(pred, target, mask, tile)
    _, k = M.radial_bins(tile)
    hb = M.high_band(k, scale)
    return float(sp[:, hb].sum() / st[:, hb].sum()), n


def test_identical_images_are_perfect_on_every_measure():
    x, m = _img(), torch.ones(2, 1, 32, 32)
    assert psnr(x, x, m) == math.inf
    assert gradient_ratio(x, x, m) == 1.0
    s, n = M.ssim_sums(x, x, m)
    assert torch.allclose(s / n, torch.ones(3, dtype=torch.float64))
    f = _field()
    ratio, tiles = _spectrum_ratio(f, f, torch.ones_like(f))
    assert tiles == 4 and ratio == pytest.approx(1.0, abs=1e-12)
    ev = (f > 0.2).float()
    num, den = M.fss_sums(ev, ev, torch.ones_like(f), 5)
    assert float(num.sum()) == 0.0 and float(den.sum()) > 0  # FSS = 1


def test_blur_lowers_gradient_ssim_and_high_band_power_noise_raises_it():
    x, m = _img(), torch.ones(2, 1, 32, 32)
    b = blur(x, 1.5)
    assert gradient_ratio(b, x, m) < 0.6
    assert gradient_ratio(x, b, m) > 1.5
    assert 0 < psnr(b, x, m) < 30
    s, n = M.ssim_sums(b, x, m)
    assert float((s / n).max()) < 0.9
    f = _field()
    fm = torch.ones_like(f)
    assert _spectrum_ratio(blur(f, 1.5), f, fm)[0] < 0.2
    noisy = f + 0.1 * torch.randn(f.shape, generator=torch.Generator().manual_seed(1))
    assert _spectrum_ratio(noisy, f, fm)[0] > 1.5


def test_psnr_of_known_error_and_masked_pixels_ignored():
    x = torch.zeros(1, 1, 8, 8)
    y = x + 0.2  # mse 0.04 over a range of 2 -> 10 log10(4 / 0.04) = 20 dB
    m = torch.ones(1, 1, 8, 8)
    assert abs(psnr(y, x, m) - 20.0) < 1e-5
    y[..., :4] = 100.0
    m[..., :4] = 0
    assert abs(psnr(y, x, m) - 20.0) < 1e-5


def test_ssim_of_constant_images_matches_the_formula():
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 2)^2
    a, b = 0.5, 0.3
    s, n = M.ssim_sums(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b), torch.ones(1, 1, 16, 16))
    c1 = (0.01 * 2.0) ** 2
    assert float(s / n) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)  # float32 moments
    assert float(n) == 6 * 6  # only wholly valid 11x11 windows


def test_fss_of_a_displaced_event_grows_with_the_neighbourhood():
    obs, fc = torch.zeros(1, 1, 15, 15), torch.zeros(1, 1, 15, 15)
    obs[0, 0, 7, 7] = 1
    fc[0, 0, 7, 8] = 1  # one pixel east
    m = torch.ones(1, 1, 15, 15)
    fss = {w: 1 - float((lambda nd: nd[0] / nd[1])(M.fss_sums(fc, obs, m, w))) for w in (1, 3, 5)}
    assert fss[1] == pytest.approx(0.0)  # no overlap at grid scale
    # 3x3: the two boxes share 6 of 9 cells: sum (pf-po)^2 = 6 * (1/9)^2, sum pf^2+po^2 = 18 * (1/9)^2
    assert fss[3] == pytest.approx(1 - 6 / 18)
    assert fss[1] < fss[3] < fss[5] < 1


def test_nan_and_fill_values_outside_the_mask_change_nothing():
    x, y = _img(1), _img(2)
    m = torch.ones(2, 1, 32, 32)
    m[:, :, :, 20:] = 0
    ref = [M.squared_error_sums(x, y, m), M.ssim_sums(x, y, m), M.gradient_sums(x, y, m),
           M.fss_sums((x > 0).float(), (y > 0).float(), m, 5)]
    xb, yb = x.clone(), y.clone()
    xb[:, :, :, 20:], yb[:, :, :, 20:] = float("nan"), 1e6
    got = [M.squared_error_sums(xb, yb, m), M.ssim_sums(xb, yb, m), M.gradient_sums(xb, yb, m),
           M.fss_sums((xb > 0).float(), (yb > 0).float(), m, 5)]
    for (a1, b1), (a2, b2) in zip(ref, got, strict=True):
        assert torch.isfinite(a2).all() and torch.allclose(a1, a2) and torch.allclose(b1, b2)
    # a tile with invalid pixels is left out of the spectra rather than poisoning them
    f = _field()
    fm = torch.ones_like(f)
    fm[..., :64, :64] = 0
    fb = f.clone()
    fb[..., :64, :64] = float("nan")
    sp, st, n = M.spectrum_tiles(fb, f, fm, 64)
    assert n == 3 and torch.isfinite(sp).all()
    assert M.psnr_from(torch.tensor(0.0), torch.tensor(0.0)).isnan()  # nothing valid: NaN, not inf


def test_row_bands_with_halos_sum_to_the_whole_image():
    """What a streamed scene relies on: owned rows of overlapping bands add up exactly."""
    x, y = _img(3, n=1, size=48), _img(4, n=1, size=48)
    m = torch.ones(1, 1, 48, 48)
    m[..., 30:33, 5:9] = 0
    halo = 8
    fns = [lambda a, b, mm, rows=None: M.ssim_sums(a, b, mm, rows),
           lambda a, b, mm, rows=None: M.gradient_sums(a, b, mm, rows),
           lambda a, b, mm, rows=None: M.fss_sums((a > 0).float(), (b > 0).float(), mm, 5, rows),
           lambda a, b, mm, rows=None: M.squared_error_sums(a, b, mm, rows)]
    for fn in fns:
        whole = fn(x, y, m)
        parts = [torch.zeros_like(whole[0]), torch.zeros_like(whole[1])]
        for r0 in range(0, 48, 16):
            lo, hi = max(0, r0 - halo), min(48, r0 + 16 + halo)
            got = fn(x[..., lo:hi, :], y[..., lo:hi, :], m[..., lo:hi, :], rows=(r0 - lo, r0 - lo + 16))
            parts[0] += got[0]
            parts[1] += got[1]
        assert torch.allclose(parts[0], whole[0]) and torch.allclose(parts[1], whole[1])
