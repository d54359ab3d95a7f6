"""Quicklooks with matplotlib (headless: the Agg backend, nothing needs a display)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..data.shards import shard_attrs


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 90) -> Path:
    """PNG written under a temporary name and renamed: never a half-written image; closes ``fig``."""
    from ..data.scene import atomic_path
    path = Path(path)
    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        tmp.replace(path)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
    return path


def pairs_quicklook(shard: str | Path, out_png: str | Path, n: int = 4) -> Path:
    """LR | HR for the ``n`` most structured patches of a ``pairs`` shard, one row per channel."""
    from ..data.sensors import load_registry
    plt = pyplot()
    attrs = shard_attrs(Path(shard))
    hr_sensor = load_registry().sensor(attrs["hr_sensor"])
    with h5py.File(shard, "r") as f:
        lr, hr = f["lr"][:], f["hr"][:]
    pick = np.argsort([-np.nanstd(p[-1]) for p in hr])[:n]
    chans = list(zip(attrs["lr_channels"], attrs["hr_channels"]))
    fig, axes = plt.subplots(len(chans), 2 * len(pick), figsize=(2.2 * 2 * len(pick), 2.2 * len(chans)),
                             squeeze=False)
    for r, (lc, hc) in enumerate(chans):
        for k, i in enumerate(pick):
            vmin, vmax = np.nanpercentile(hr[i, r], [1, 99])
            cmap = "gray_r" if hr_sensor.channel(hc).quantity == "brightness_temperature" else "gray"  # clouds white
            for j, img in enumerate((lr[i, r], hr[i, r])):
                ax = axes[r, 2 * k + j]
                ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{'LR' if j == 0 else 'HR'} #{i}", fontsize=8)
                if k == 0 and j == 0:
                    ax.set_ylabel(f"{lc} / {hc}", fontsize=8)
    fig.suptitle(f"{attrs['pair']} training pairs (x{attrs['scale']}), {Path(shard).name}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


def busiest_window(img: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the ``size`` window (on a half-window grid) with the most valid structure."""
    h, w = img.shape
    best, at = -1.0, (0, 0)
    for r in range(0, max(1, h - size + 1), max(1, size // 2)):
        for c in range(0, max(1, w - size + 1), max(1, size // 2)):
            win = img[r:r + size, c:c + size]
            if np.isfinite(win).mean() > 0.9 and np.nanstd(win) > best:
                best, at = float(np.nanstd(win)), (r, c)
    return at


def quicklook_views(lr: np.ndarray, max_side: int = 640, zoom_lr: int = 48) -> dict:
    """What the quicklook needs of the physical LR (C, H, W): a subsampled overview and a zoom on
    the most structured window -- small arrays, so the scene itself need not be kept."""
    h, w = lr.shape[1:]
    k = max(1, -(-max(h, w) // max_side))
    zoom_lr = min(zoom_lr, h, w)
    r0, c0 = busiest_window(lr[-1, ::4, ::4], max(1, zoom_lr // 4))
    r0, c0 = r0 * 4, c0 * 4
    return {"overview": lr[:, ::k, ::k].copy(), "zoom": lr[:, r0:r0 + zoom_lr, c0:c0 + zoom_lr].copy(),
            "k": k, "r0": r0, "c0": c0, "zoom_lr": zoom_lr}


def sr_quicklook(views: dict, lr_channels: list[str], output_nc: str | Path, out_png: str | Path,
                 title: str | None = None) -> Path:
    """LR vs SR per channel: the whole scene (subsampled) and a full-resolution zoom on the most
    structured window.  Reads the output strided, so a full disk never sits in memory; ``title``
    (default: the file name) names the product when it is drawn from its temporary file."""
    import netCDF4
    plt = pyplot()
    output_nc, out_png = Path(output_nc), Path(out_png)
    k, r0, c0, zoom_lr = views["k"], views["r0"], views["c0"], views["zoom_lr"]
    with netCDF4.Dataset(output_nc) as nc:
        scale = int(nc.getncattr("scale"))
        names = [v for v in nc.variables if nc[v].dimensions == ("y", "x")]
        rows = []
        for i, name in enumerate(names):
            sr_over = np.ma.filled(nc[name][::k * scale, ::k * scale].astype(np.float32), np.nan)
            sr_zoom = np.ma.filled(nc[name][r0 * scale:(r0 + zoom_lr) * scale, c0 * scale:(c0 + zoom_lr) * scale]
                                   .astype(np.float32), np.nan)
            rows.append((name, lr_channels[i], sr_over, sr_zoom, nc[name].getncattr("units")))
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for i, (name, lname, sr_over, sr_zoom, units) in enumerate(rows):
        lr_over, lr_zoom = views["overview"][i], views["zoom"][i]
        vmin, vmax = np.nanpercentile(lr_zoom, [1, 99]) if np.isfinite(lr_zoom).any() else (0, 1)
        cmap = "gray_r" if units == "K" else "gray"  # clouds white
        for j, (img, title) in enumerate(((lr_over, f"LR {lname}"), (sr_over, f"SR {name}"),
                                          (lr_zoom, f"LR zoom ({zoom_lr} px)"), (sr_zoom, f"SR zoom (x{scale})"))):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    fig.suptitle(title or output_nc.name, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=80)
