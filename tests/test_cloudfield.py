"""The simulator's cloud statistics against what real geostationary IR scenes measure."""
import datetime as dt

import numpy as np
import pytest

from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.data.synthetic.archive import FINE, Observer
from cloudsr_hpc.data.synthetic.cloudfield import CloudFieldSpec, CloudScene, grid_points
from cloudsr_hpc.evaluation.spectra import radial_psd, spectral_slope

T = dt.datetime(2024, 6, 1, 12, 0)


@pytest.fixture(scope="module")
def scene():
    domain = SEVIRI_FULL_DISK.window(200, 1950, 192, 192)
    region = domain.window(32, 32, 128, 128).scaled(FINE)
    return CloudScene(CloudFieldSpec(seed=3), domain, region)


def _hr_ir(scene, when=T, seed=0):
    reg = load_registry()
    grid = scene.region.window(64, 64, 512, 512).scaled(1)  # 375 m target, inside the fine region
    hr_grid = grid.__class__(**{**grid.__dict__, "step": grid.step * 2, "full_rows": grid.full_rows // 2,
                                "full_cols": grid.full_cols // 2, "row0": grid.row0 // 2,
                                "col0": grid.col0 // 2,
                                "nrows": 256, "ncols": 256})  # 750 m: the x4 HR target grid
    x, y = grid_points(hr_grid)
    obs = Observer(scene, reg.sensor("viirs"), seed).observe(when, x, y, ["I05", "I01"],
                                                             {"I05": 375.0, "I01": 375.0})
    return obs["I05"], obs["I01"]


def test_ir_spectral_slope_matches_real_clouds(scene):
    bt, _ = _hr_ir(scene)
    slope2d = spectral_slope(bt, (1 / 64, 1 / 4))
    # radially averaged 2-D PSD slope of real geostationary IR cloud scenes: about -3.0
    assert -3.3 <= slope2d <= -2.4, slope2d
    assert -2.3 <= slope2d + 1 <= -1.4  # the 1-D (azimuthally summed) equivalent


def test_cold_tops_over_warm_surface_and_sharp_edges(scene):
    bt, vis = _hr_ir(scene)
    assert np.nanpercentile(bt, 2) < 240 and np.nanpercentile(bt, 98) > 280
    assert np.nanmin(bt) > 195
    # sharp edges: the gradient distribution is heavy-tailed (edges), not Gaussian
    g = np.hypot(*np.gradient(bt))
    assert np.nanpercentile(g, 99.5) > 8 * np.nanmedian(g)
    assert 5 < np.nanmean(vis) < 80  # bright clouds over dark ocean/land at noon


def test_white_noise_would_fail_the_slope_test():
    rng = np.random.default_rng(0)
    assert spectral_slope(rng.standard_normal((256, 256))) > -0.5
    k, p = radial_psd(rng.standard_normal((128, 128)))
    assert len(k) == 64 and np.all(p > 0)


def test_field_is_deterministic_and_evolves_by_advection(scene):
    a = scene.latent(scene.domain, T)["cloud"]
    b = CloudScene(CloudFieldSpec(seed=3), scene.domain, scene.region).latent(scene.domain, T)["cloud"]
    assert np.array_equal(a, b)
    later = scene.latent(scene.domain, T + dt.timedelta(minutes=30))["cloud"]
    # 30 min at 12 m/s eastward = 21.6 km = 7.2 LR px: the best integer shift is ~7 columns
    errs = {s: np.mean((np.roll(a, s, axis=1)[:, 20:-20] - later[:, 20:-20]) ** 2) for s in range(0, 12)}
    assert min(errs, key=errs.get) in (7, 8)
    other = CloudScene(CloudFieldSpec(seed=4), scene.domain).latent(scene.domain, T)["cloud"]
    assert not np.array_equal(a, other)


def test_night_has_no_reflectance(scene):
    _, vis_night = _hr_ir(scene, dt.datetime(2024, 6, 1, 0, 0))
    assert np.nanpercentile(vis_night, 99) < 1.0 and np.nanmean(vis_night) < 0.2  # only clipped noise
