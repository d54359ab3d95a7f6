import math

import torch

from cloudsr_hpc.data.degradations import blur
from cloudsr_hpc.evaluation.metrics import gradient_ratio, psnr


def _img():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


def test_identical_images():
    x, m = _img(), torch.ones(2, 1, 32, 32)
    assert psnr(x, x, m) == math.inf
    assert gradient_ratio(x, x, m) == 1.0


def test_blur_lowers_gradient_ratio_and_psnr_is_finite():
    x, m = _img(), torch.ones(2, 1, 32, 32)
    b = blur(x, 1.5)
    assert gradient_ratio(b, x, m) < 0.6
    assert gradient_ratio(x, b, m) > 1.5
    assert 0 < psnr(b, x, m) < 30


def test_psnr_of_known_error_and_masked_pixels_ignored():
    x = torch.zeros(1, 1, 8, 8)
    y = x + 0.2  # mse 0.04 over a range of 2 -> 10 log10(4 / 0.04) = 20 dB
    m = torch.ones(1, 1, 8, 8)
    assert abs(psnr(y, x, m) - 20.0) < 1e-5
    y[..., :4] = 100.0
    m[..., :4] = 0
    assert abs(psnr(y, x, m) - 20.0) < 1e-5
