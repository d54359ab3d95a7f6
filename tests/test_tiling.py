import numpy as np
import torch

from cloudsr_hpc.inference.tiling import Accumulator, blend_window, interior_edges, plan_tiles, tile_origins
from cloudsr_hpc.models.network import ConditionalUNet
from cloudsr_hpc.schema import ModelConfig


def test_tile_origins_cover_with_overlap():
    o = tile_origins(100, 32, 8)
    assert o[0] == 0 and o[-1] == 68 and all(b - a <= 24 for a, b in zip(o, o[1:], strict=False))
    assert tile_origins(20, 32, 8) == [0]
    assert plan_tiles(np.ones((10, 50), bool), 32, 16)[0].rows == 10  # a scene thinner than a tile


def test_space_tiles_are_skipped():
    valid = np.zeros((64, 64), bool)
    valid[40:, 40:] = True
    tiles = plan_tiles(valid, 32, 8)
    assert tiles and all(t.row0 + t.rows > 40 and t.col0 + t.cols > 40 for t in tiles)
    assert len(tiles) < len(plan_tiles(np.ones((64, 64), bool), 32, 8))


def test_window_has_no_ramp_at_scene_borders():
    w = blend_window(16, 16, halo=2, ramp=4, interior=(False, True, False, True))
    assert w[0, 0] == 1.0 and w[-1, -1] == 0.0 and w[:2, :2].min() == 1.0
    assert np.all(np.diff(w[8, 8:]) <= 0)  # a monotone ramp down towards the interior edge


def _tiled(fn, x, scale, tile, overlap, halo, ramp, order=None):
    c, h, w = x.shape
    tiles = plan_tiles(np.ones((h, w), bool), tile, overlap)
    acc = Accumulator(c, h * scale, w * scale)
    for t in (tiles if order is None else [tiles[i] for i in order]):
        pred = fn(x[:, t.row0:t.row0 + t.rows, t.col0:t.col0 + t.cols])
        win = blend_window(t.rows * scale, t.cols * scale, halo, ramp, interior_edges(t, h, w))
        acc.add(pred, np.ones(pred.shape[1:], bool), win, t.row0 * scale, t.col0 * scale)
    return acc.result(), len(tiles)


def test_tiled_equals_whole_scene_for_a_translation_equivariant_network():
    torch.manual_seed(0)
    net = ConditionalUNet(2, ModelConfig(base_channels=8, channel_mult=[1, 2], num_res_blocks=1)).eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    scale = 4

    def sr(lr):  # regression-style deterministic model on bicubic y
        y = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], scale_factor=scale, mode="bicubic")
        with torch.no_grad():
            out = net(y, y, torch.zeros(1, dtype=torch.long), torch.ones(1, 1, *y.shape[-2:]))
        return out[0].numpy()

    lr = np.random.default_rng(0).standard_normal((2, 40, 44)).astype(np.float32)
    whole = sr(lr)
    tiled, n = _tiled(sr, lr, scale, tile=24, overlap=16, halo=28, ramp=8)
    assert n > 1
    # bicubic itself sees the tile border: skip 2 LR px = 8 HR px at scene borders
    assert np.abs(tiled - whole)[:, 8:-8, 8:-8].max() < 1e-5
    shuffled, _ = _tiled(sr, lr, scale, 24, 16, 28, 8, order=list(range(n))[::-1])
    assert np.abs(shuffled - tiled).max() < 1e-6  # independent of tile order


def test_nan_pixel_stays_local():
    acc = Accumulator(1, 8, 8)
    pred = np.ones((1, 8, 8), np.float32)
    pred[0, 3, 3] = np.nan
    valid = np.isfinite(pred[0])
    acc.add(pred, valid, np.ones((8, 8), np.float32), 0, 0)
    out = acc.result()
    assert np.isnan(out[0, 3, 3]) and np.isfinite(np.delete(out.ravel(), 3 * 8 + 3)).all()
