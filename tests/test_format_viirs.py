"""VIIRS L1B I-band writer (VNP02IMG + VNP03IMG) read back by satpy's own ``viirs_l1b`` reader.

Tolerances: reflectance is quantised to half a count (0.001 %); a brightness temperature comes
back as the nearest entry of the band's LUT, so its error is at most half the LUT step around it
(< 0.02 K for the ~245 .. 265 K test fields); lon/lat are float32 in the file (~1e-6 deg).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyorbital import astronomy
from pyproj import Geod
from satpy import Scene, find_files_and_readers

from cloudsr_hpc.data.synthetic.formats.viirs import (
    BANDS,
    COUNT_FILL,
    COUNT_VALID_MAX,
    SCAN_PERIOD_S,
    ReflectiveBand,
    ThermalBand,
    viirs_swath_lonlat,
    write_viirs_l1b,
)

START = dt.datetime(2024, 6, 1, 12, 0, 0)
N_SCANS, N_COLS = 4, 256  # 128 x 256 pixels
BAD_PIXELS = ((5, 7), (100, 200))  # NaN in every field
REFLECTIVE = ["I01", "I02", "I03"]
THERMAL = ["I04", "I05"]
ANGLES = ["solar_zenith_angle", "solar_azimuth_angle", "satellite_zenith_angle", "satellite_azimuth_angle"]
WGS84 = Geod(ellps="WGS84")


def smooth_fields(lon: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
    """Known smooth functions of lon/lat (the swath spans ~9.4..10.6 E, 44.7..45.3 N)."""
    dlon, dlat = lon - 10.0, lat - 45.0
    fields = {
        "I01": 20.0 + 5.0 * dlon + 3.0 * dlat,
        "I02": 35.0 - 4.0 * dlon + 6.0 * dlat ** 2,
        "I03": 8.0 + 2.0 * np.sin(3.0 * dlon),
        "I04": 260.0 + 0.5 * lon - 0.3 * lat,
        "I05": 250.0 + 8.0 * dlon - 5.0 * dlat,
    }
    fields = {name: v.astype(np.float32) for name, v in fields.items()}
    for v in fields.values():
        for pixel in bad_pixels(lon.shape):
            v[pixel] = np.nan
    return fields


def bad_pixels(shape) -> list[tuple[int, int]]:
    return [p for p in BAD_PIXELS if p[0] < shape[0] and p[1] < shape[1]]


def load(paths) -> Scene:
    scn = Scene(reader="viirs_l1b", filenames=[str(p) for p in paths])
    scn.load(REFLECTIVE, calibration="reflectance")
    scn.load(THERMAL, calibration="brightness_temperature")
    return scn


@pytest.fixture(scope="module")
def granule(tmp_path_factory):
    out = tmp_path_factory.mktemp("viirs")
    lon, lat = viirs_swath_lonlat(10.0, 45.0, 190.0, N_SCANS, n_cols=N_COLS)  # descending pass
    fields = smooth_fields(lon, lat)
    paths = write_viirs_l1b(out, lon, lat, fields, START)
    return out, paths, lon, lat, fields


@pytest.fixture(scope="module")
def scene(granule):
    scn = load(granule[1])
    scn.load(ANGLES)
    return scn


def half_lut_step(band: ThermalBand, bt: np.ndarray) -> np.ndarray:
    """Half the gap between the two LUT entries that bracket ``bt``: the nearest-entry bound."""
    lut = band.lut()[:COUNT_VALID_MAX + 1].astype(np.float64)
    hi = np.searchsorted(lut, bt).clip(1, COUNT_VALID_MAX)
    return 0.5 * (lut[hi] - lut[hi - 1])


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("name", REFLECTIVE + THERMAL)
def test_values_within_quantisation(scene, granule, name):
    expected = granule[4][name]
    got = scene[name].values
    assert got.shape == expected.shape == (N_SCANS * 32, N_COLS)
    err = np.abs(got.astype(np.float64) - expected)
    band = BANDS[name]
    if isinstance(band, ReflectiveBand):
        assert scene[name].attrs["units"] == "%"
        tol = 0.5 * band.percent_per_count + 1e-5  # half a count (+ float32 products)
        assert np.nanmax(err) <= tol, (name, np.nanmax(err))
    else:
        assert scene[name].attrs["units"] == "K"
        tol = half_lut_step(band, np.nan_to_num(expected, nan=250.0)) + 1e-4  # + float32 LUT values
        assert np.all(err[np.isfinite(err)] <= tol[np.isfinite(err)]), (name, np.nanmax(err))
        assert np.nanmax(err) < 0.02


def test_nan_inputs_come_back_nan(scene, granule):
    fields = granule[4]
    for name in REFLECTIVE + THERMAL:
        got = scene[name].values
        assert np.array_equal(np.isnan(got), np.isnan(fields[name])), name
        assert all(np.isnan(got[p]) for p in BAD_PIXELS)


def test_swath_lonlat_round_trip(scene, granule):
    lon, lat = granule[2], granule[3]
    for name in ("I01", "I05"):
        got_lon, got_lat = (np.asarray(a) for a in scene[name].attrs["area"].get_lonlats())
        np.testing.assert_allclose(got_lon, lon, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_lat, lat, rtol=0, atol=1e-4)


def test_metadata(scene, granule):
    out, paths = granule[0], granule[1]
    assert scene.start_time == START
    assert scene.end_time == START + dt.timedelta(seconds=int(N_SCANS * SCAN_PERIOD_S))
    attrs = scene["I05"].attrs
    assert (attrs["platform_name"], attrs["sensor"], attrs["rows_per_scan"]) == ("Suomi-NPP", "viirs", 32)
    assert attrs["orbital_parameters"]["start_direction"] == "Descending"
    assert attrs["day_night"] == "Day"
    assert [p.name for p in paths] == ["VNP02IMG.A2024153.1200.002.2024153130007.nc",
                                       "VNP03IMG.A2024153.1200.002.2024153130007.nc"]
    assert sorted(find_files_and_readers(base_dir=str(out), reader="viirs_l1b")["viirs_l1b"]) == \
        sorted(str(p) for p in paths)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_angles(scene, granule):
    lon, lat = granule[2], granule[3]
    scan_mid = [START + dt.timedelta(seconds=(r // 32 + 0.5) * SCAN_PERIOD_S) for r in (0, 127)]
    for r, t in zip((0, 127), scan_mid, strict=True):
        sza = astronomy.sun_zenith_angle(t, lon[r], lat[r])
        np.testing.assert_allclose(scene["solar_zenith_angle"].values[r], sza, atol=0.011)
    vza = scene["satellite_zenith_angle"].values
    assert np.all(vza[:, N_COLS // 2 - 1:N_COLS // 2 + 1] < 0.05)  # the track runs between them
    assert np.all(np.diff(vza[:, N_COLS // 2:], axis=1) >= 0)  # grows toward the edge
    np.testing.assert_allclose(vza[:, 0], vza[:, -1], atol=0.011)  # symmetric swath
    vaa = scene["satellite_azimuth_angle"].values
    # column 0 is right of a 190-degree heading (west): it sees the satellite to the east
    assert np.all(np.abs(vaa[:, 0] - 100.0) < 2.0) and np.all(np.abs(vaa[:, -1] + 80.0) < 2.0)


def test_radiance_is_consistent_with_bt(granule):
    scn = Scene(reader="viirs_l1b", filenames=[str(p) for p in granule[1]])
    scn.load(["I05"], calibration="radiance")
    scn_bt = load(granule[1])
    rad = scn["I05"].values
    assert scn["I05"].attrs["units"] == "W m-2 um-1 sr-1"
    np.testing.assert_allclose(BANDS["I05"].brightness_temperature(rad), scn_bt["I05"].values,
                               rtol=0, atol=1e-3)


def test_noaa20_names_and_missing_bands(tmp_path):
    lon, lat = viirs_swath_lonlat(-100.0, 30.0, 10.0, 1, n_cols=64)  # ascending pass
    fields = {"I05": smooth_fields(lon, lat)["I05"]}
    paths = write_viirs_l1b(tmp_path, lon, lat, fields, START, platform="NOAA-20")
    assert [p.name[:8] for p in paths] == ["VJ102IMG", "VJ103IMG"]
    scn = load(paths)
    assert scn["I05"].attrs["platform_name"] == "NOAA-20"
    assert scn["I05"].attrs["orbital_parameters"]["start_direction"] == "Ascending"
    assert np.isfinite(scn["I05"].values).sum() == lon.size - len(bad_pixels(lon.shape))
    assert all(np.isnan(scn[name].values).all() for name in REFLECTIVE + ["I04"])


def test_bad_inputs(tmp_path):
    lon, lat = viirs_swath_lonlat(0.0, 0.0, 0.0, 1, n_cols=16)
    with pytest.raises(ValueError, match="whole number"):
        write_viirs_l1b(tmp_path, lon[:20], lat[:20], {}, START)
    with pytest.raises(ValueError, match="shape"):
        write_viirs_l1b(tmp_path, lon, lat, {"I05": np.zeros((3, 3), np.float32)}, START)
    with pytest.raises(ValueError, match="I-band"):
        write_viirs_l1b(tmp_path, lon, lat, {"M15": np.zeros(lon.shape, np.float32)}, START)
    with pytest.raises(ValueError, match="platform"):
        write_viirs_l1b(tmp_path, lon, lat, {}, START, platform="Metop-B")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- calibration

@pytest.mark.parametrize("name", THERMAL)
def test_bt_lut_and_encoding(name):
    band = BANDS[name]
    lut = band.lut()
    valid = lut[:COUNT_VALID_MAX + 1].astype(np.float64)
    assert np.all(np.diff(valid) > 0)  # strictly monotonic, so the nearest entry is unique
    assert valid[0] == pytest.approx(band.bt_min, abs=1e-3)
    assert valid[-1] == pytest.approx(band.bt_max, abs=1e-3)
    assert np.all(lut[COUNT_VALID_MAX + 1:] < 0)  # flag/fill counts are masked by the LUT's valid range
    # the LUT is Planck of the radiance the count stands for
    counts = np.array([0, 1000, 30000, COUNT_VALID_MAX])
    rad = counts * float(band.scale_factor) + float(band.add_offset)
    np.testing.assert_allclose(valid[counts], band.brightness_temperature(rad), atol=1e-4)

    bt = np.random.default_rng(0).uniform(band.bt_min, band.bt_max, 20000)
    encoded = band.encode(np.append(bt, [np.nan, 1000.0]))
    assert encoded[-2] == COUNT_FILL and encoded[-1] == COUNT_VALID_MAX  # NaN -> fill; saturation
    assert np.all(np.abs(valid[encoded[:-2]] - bt) <= half_lut_step(band, bt) + 1e-9)


@pytest.mark.parametrize("name, bt, step", [("I05", 200.0, 0.005), ("I05", 150.5, 0.023),
                                            ("I04", 220.0, 0.11), ("I04", 260.0, 0.011),
                                            ("I04", 290.0, 0.003)])
def test_documented_bt_precision(name, bt, step):
    assert half_lut_step(BANDS[name], np.array([bt]))[0] <= step


def test_reflectance_encoding():
    band = BANDS["I01"]
    values = np.array([0.0, 0.0012, 55.5555, 131.0, 150.0, -3.0, np.nan])
    counts = band.encode(values)
    assert counts[-1] == COUNT_FILL and counts[4] == COUNT_VALID_MAX and counts[5] == 0
    np.testing.assert_allclose(counts[:4] * band.percent_per_count, values[:4],
                               atol=0.5 * band.percent_per_count)


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("heading", [0.0, 190.0, 347.0])
def test_swath_geometry(heading):
    lon, lat = viirs_swath_lonlat(10.0, 45.0, heading, 2, n_cols=512)
    assert lon.shape == lat.shape == (64, 512)
    r, c = 32, 256  # next to the centre
    along = WGS84.inv(lon[r, c], lat[r, c], lon[r + 1, c], lat[r + 1, c])
    across = WGS84.inv(lon[r, c], lat[r, c], lon[r, c + 1], lat[r, c + 1])[2]
    assert along[2] == pytest.approx(375.0, rel=0.05) and across == pytest.approx(375.0, rel=0.05)
    # rows follow the track
    assert (along[0] - heading + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=0.5)
    # column 0 lies to the right of the direction of flight
    to_col0 = WGS84.inv(lon[r, c], lat[r, c], lon[r, 0], lat[r, 0])[0]
    assert (to_col0 - heading - 90.0 + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1.0)


def test_full_swath_width():
    lon, lat = viirs_swath_lonlat(0.0, 0.0, 0.0, 1)
    assert lon.shape == (32, 6400)
    width = WGS84.inv(lon[16, 0], lat[16, 0], lon[16, -1], lat[16, -1])[2]
    edge = WGS84.inv(lon[16, 0], lat[16, 0], lon[16, 1], lat[16, 1])[2]
    assert width == pytest.approx(3040e3, rel=0.02)  # VIIRS's swath
    assert 1.5 < edge / 375.0 < 2.5  # edge pixels grow about twofold
    assert np.array_equal(viirs_swath_lonlat(0.0, 0.0, 0.0, 1)[0], lon)  # deterministic
