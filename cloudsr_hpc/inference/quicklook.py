"""The quicklook of a super-resolved scene: LR vs SR per channel, the whole scene subsampled and a
full-resolution zoom on its most structured window (drawn by the pipeline before the output is
renamed; headless matplotlib through :mod:`cloudsr_hpc.core.figures`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.figures import pyplot, save_figure


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
            sr_zoom = np.ma.filled(nc[name][r0 * scale:(r0 + zoom_lr) * scale,
                                            c0 * scale:(c0 + zoom_lr) * scale]
                                   .astype(np.float32), np.nan)
            rows.append((name, lr_channels[i], sr_over, sr_zoom, nc[name].getncattr("units")))
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for i, (name, lname, sr_over, sr_zoom, units) in enumerate(rows):
        lr_over, lr_zoom = views["overview"][i], views["zoom"][i]
        vmin, vmax = np.nanpercentile(lr_zoom, [1, 99]) if np.isfinite(lr_zoom).any() else (0, 1)
        cmap = "gray_r" if units == "K" else "gray"  # clouds white
        for j, (img, title) in enumerate(((lr_over, f"LR {lname}"), (sr_over, f"SR {name}"),
                                          (lr_zoom, f"LR zoom ({zoom_lr} px)"),
                                          (sr_zoom, f"SR zoom (x{scale})"))):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    fig.suptitle(title or output_nc.name, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=80)
