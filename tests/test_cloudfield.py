"""The simulator's cloud statistics against what real geostationary IR scenes measure."""
import datetime as dt

import numpy as np
import pytest

from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.data.synthetic.archive import FINE, Observer
from cloudsr_hpc.data.synthetic.cloudfield import CloudFieldSpec, CloudScene, channel_value, grid_points
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


# --------------------------------------------------------------------------- in-cloud texture (opt-in)
TEXTURED = dict(texture_sigma=0.9, tau0=12.0, beta_cloud=3.1, cloud_threshold=0.1)


@pytest.fixture(scope="module")
def textured(scene):
    return CloudScene(CloudFieldSpec(seed=3, texture_sigma=0.9), scene.domain, scene.region)


def test_texture_off_is_todays_field_and_on_leaves_its_draws(scene, textured):
    off = CloudScene(CloudFieldSpec(seed=3, texture_sigma=0.0, beta_texture=2.0, texture_scale_m=30e3),
                     scene.domain, scene.region)
    for raster in (scene.domain, scene.region):
        a, b = scene.physical(raster, T), off.physical(raster, T)
        assert all(np.array_equal(a[k], b[k], equal_nan=True) and a[k].dtype == b[k].dtype for k in a)
    assert "texture" not in scene.latent(scene.domain, T)
    # the texture has its own generator: the cloud and top fields of a seed stay what they were
    plain, tex = scene.latent(scene.region, T), textured.latent(scene.region, T)
    assert np.array_equal(plain["cloud"], tex["cloud"]) and np.array_equal(plain["top"], tex["top"])


def test_texture_is_lognormal_of_mean_one(scene, textured):
    plain, tex = scene.physical(scene.region, T)["tau"], textured.physical(scene.region, T)["tau"]
    cloudy = plain > 0
    assert np.array_equal(cloudy, tex > 0)  # the texture modulates clouds, it makes none
    log_ratio = np.log(tex[cloudy] / plain[cloudy])  # = sigma g_tex - sigma^2 / 2
    assert 0.75 * 0.9 < log_ratio.std() < 1.25 * 0.9, log_ratio.std()
    # exp(sigma g - sigma^2/2) has mean 1: mean tau about kept (without -sigma^2/2 it would be x1.5)
    assert 0.8 < tex[cloudy].mean() / plain[cloudy].mean() < 1.25


def _edge_share(v: np.ndarray) -> float:
    """Share of sum |grad| in the steepest 5 % of pixels (realism.py's edge_top5_share)."""
    g = np.sort(np.hypot(*np.gradient(v)).ravel())[::-1]
    return float(g[:g.size // 20].sum() / g.sum())


def test_texture_moves_gradient_from_edges_into_clouds(scene):
    def shares(**kw):
        st = CloudScene(CloudFieldSpec(seed=3, **kw), scene.domain, scene.region).physical(scene.region, T)
        return _edge_share(channel_value("vis06", st)), _edge_share(channel_value("ir108", st))

    vis0, ir0 = shares(**{**TEXTURED, "texture_sigma": 0.0})
    vis1, ir1 = shares(**TEXTURED)
    assert vis1 < 0.75 * vis0 and vis1 < 0.45, (vis0, vis1)  # today's default: ~0.8
    assert ir1 < ir0, (ir0, ir1)


def test_texture_lr_and_hr_rasters_see_one_field(scene, textured):
    """The fine raster (HR) block-averaged to the LR grid matches the coarse raster (LR) at the
    scales the coarse one resolves: the crossover holds for the texture as for the cloud field."""
    from scipy import ndimage
    coarse = textured.latent(scene.domain, T)
    fine = textured.latent(scene.region, T)
    for name, min_corr in (("cloud", 0.99), ("texture", 0.95)):
        lr = coarse[name][32:160, 32:160]  # the region's LR pixels (fixture: window(32, 32, 128, 128))
        hr = fine[name].reshape(128, FINE, 128, FINE).mean(axis=(1, 3))
        lr_s, hr_s = ndimage.gaussian_filter(lr, 3), ndimage.gaussian_filter(hr, 3)
        assert np.corrcoef(lr_s.ravel(), hr_s.ravel())[0, 1] > min_corr, name
    assert 0.8 < fine["texture"].std() < 1.2  # unit std: sigma is the log-normal's
    # and it moves with the cloud: advected by the same wind
    later = textured.latent(scene.domain, T + dt.timedelta(minutes=30))["texture"]
    errs = {s: np.mean((np.roll(coarse["texture"], s, axis=1)[:, 20:-20] - later[:, 20:-20]) ** 2)
            for s in range(0, 12)}
    assert min(errs, key=errs.get) in (7, 8)


def test_synth_cloud_config_mirrors_the_spec_and_names_bad_keys():
    from dataclasses import fields

    from cloudsr_hpc.config import load
    from cloudsr_hpc.data.synthetic.cloudfield import cloud_spec
    from cloudsr_hpc.errors import ConfigError
    from cloudsr_hpc.schema import PairsFile, SynthCloudConfig
    assert {f.name for f in fields(SynthCloudConfig)} == {f.name for f in fields(CloudFieldSpec)} - {"seed"}
    assert cloud_spec(load(PairsFile, "pairs.yaml").synth.cloud, 7) == CloudFieldSpec(seed=7)  # today's
    realistic = cloud_spec(load(PairsFile, "synth_realistic.yaml").synth.cloud, 7)
    assert realistic.seed == 7 and realistic.texture_sigma > 0
    for override, needle in (("synth.cloud.texture_sigma=-1", "synth.cloud.texture_sigma = -1.0: must be in"),
                             ("synth.cloud.tau0=0", "synth.cloud.tau0 = 0.0: must be > 0"),
                             ("synth.cloud.wind_ms=[12, 300]", "synth.cloud: wind_ms = [12.0, 300.0]"),
                             ("synth.cloud.texture_sigmaa=1", "synth.cloud.texture_sigmaa: unknown key")):
        with pytest.raises(ConfigError) as e:
            load(PairsFile, "pairs.yaml", [override])
        assert needle in str(e.value) and "pairs.yaml" in str(e.value), str(e.value)


def test_submit_synth_takes_the_cloud_section_of_its_config(tmp_path):
    """``submit synth --config synth_realistic.yaml`` writes the textured field, the default config
    today's: the same slot differs between the two and is the same for the same config."""
    import xarray as xr

    from tests.conftest import run_cli

    def slot(name, *cfg):
        arch = tmp_path / name
        run_cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T12:00", "--archive", arch,
                "--lr-only", *cfg, check=True)
        path = next(arch.rglob("*.nc"))
        with xr.open_dataset(path) as ds:
            return {v: ds[v].values.copy() for v in ds.data_vars if ds[v].ndim == 2}

    default, realistic = slot("default"), slot("realistic", "--config", "synth_realistic.yaml")
    again = slot("again", "--config", "synth_realistic.yaml")
    shared = sorted(set(default) & set(realistic))
    assert shared
    assert any(not np.array_equal(default[v], realistic[v], equal_nan=True) for v in shared)
    assert all(np.array_equal(realistic[v], again[v], equal_nan=True) for v in shared)
