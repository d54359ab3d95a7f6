"""Quicklooks with matplotlib (headless: the Agg backend, nothing needs a display)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..data.shards import shard_attrs


def pairs_quicklook(shard: str | Path, out_png: str | Path, n: int = 4) -> Path:
    """LR | HR for the ``n`` most structured patches of a ``pairs`` shard, one row per channel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..data.sensors import load_registry
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
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
