import numpy as np
from scipy import ndimage

from cloudsr_hpc.evaluation.alignment import pair_shift_lr_px, phase_correlation_shift


def test_recovers_known_subpixel_shift():
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 3)
    moved = ndimage.shift(img, (-0.6, 1.3), mode="wrap")  # (rows, cols)
    dc, dr = phase_correlation_shift(img, moved)
    assert abs(dc - 1.3) < 0.15 and abs(dr + 0.6) < 0.15


def test_pair_shift_in_lr_pixels():
    rng = np.random.default_rng(1)
    hr = ndimage.gaussian_filter(rng.standard_normal((256, 256)), 6)
    lr = hr.reshape(64, 4, 64, 4).mean((1, 3))
    hr_moved = ndimage.shift(hr, (0, 4.0), mode="wrap")  # 4 HR px east = 1 LR px
    dc, dr = pair_shift_lr_px(lr, hr_moved, 4)
    assert abs(dc - 1.0) < 0.15 and abs(dr) < 0.15


def test_sign_convention_on_an_integer_roll_and_nan_pixels():
    """moved(p) = ref(p - d): np.roll by +d gives +d; NaN pixels (space, gaps) take the image mean."""
    rng = np.random.default_rng(2)
    img = ndimage.gaussian_filter(rng.standard_normal((96, 96)), 2)
    moved = np.roll(img, (-3, 5), axis=(0, 1))  # content 5 px east, 3 px north
    moved[:6, :10] = np.nan
    dc, dr = phase_correlation_shift(img, moved)
    assert abs(dc - 5) < 0.1 and abs(dr + 3) < 0.1
    dc, dr = phase_correlation_shift(moved, img)  # the inverse displacement
    assert abs(dc + 5) < 0.1 and abs(dr - 3) < 0.1
