import numpy as np

from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK, geos_to_lonlat, lonlat_to_geos


def test_window_coordinates_and_extent_are_consistent():
    g = SEVIRI_FULL_DISK.window(100, 2000, 30, 40)
    x0, y0, x1, y1 = g.extent
    assert np.isclose(g.x[0], x0 + g.step / 2) and np.isclose(g.x[-1], x1 - g.step / 2)
    assert np.isclose(g.y[0], y1 - g.step / 2) and np.isclose(g.y[-1], y0 + g.step / 2)
    assert np.all(np.diff(g.x) > 0) and np.all(np.diff(g.y) < 0)  # west->east, north->south


def test_scaled_grid_nests_in_lr_grid():
    g = SEVIRI_FULL_DISK.window(10, 20, 8, 8)
    h = g.scaled(4)
    assert h.shape == (32, 32)
    assert np.allclose(h.extent, g.extent)
    assert np.allclose(h.x.reshape(8, 4).mean(1), g.x)  # 4 HR centres average to the LR centre


def test_projection_round_trip_and_off_disk():
    g = SEVIRI_FULL_DISK
    lon, lat = np.array([0.0, 10.0, -30.0, 50.0]), np.array([0.0, 45.0, -20.0, 60.0])
    x, y = lonlat_to_geos(lon, lat, g)
    lon2, lat2 = geos_to_lonlat(x, y, g)
    assert np.allclose(lon2, lon, atol=1e-6) and np.allclose(lat2, lat, atol=1e-6)
    assert y[1] > 0 and x[1] > 0  # north and east are positive
    corner_lon, _ = g.window(0, 0, 1, 1).lonlat()  # the disk's corner is space
    assert np.isnan(corner_lon).all()
    assert np.isnan(lonlat_to_geos(np.array([120.0]), np.array([0.0]), g)[0]).all()  # behind the limb
