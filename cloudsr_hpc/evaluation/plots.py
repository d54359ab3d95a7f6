"""Quicklooks of training pairs (headless matplotlib, :mod:`cloudsr_hpc.core.figures`); the quicklook of
an inference output is :mod:`cloudsr_hpc.inference.quicklook`."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..core.figures import pyplot, save_figure
from ..data.shards import shard_attrs


def pairs_quicklook(shard: str | Path, out_png: str | Path, n: int = 4) -> Path:
    """LR | HR for the ``n`` most structured patches of a ``pairs`` shard, one row per channel."""
    from ..data.sensors import load_registry
    plt = pyplot()
    attrs = shard_attrs(Path(shard))
    hr_sensor = load_registry().sensor(attrs["hr_sensor"])
    with h5py.File(shard, "r") as f:
        lr, hr = f["lr"][:], f["hr"][:]
    pick = np.argsort([-np.nanstd(p[-1]) for p in hr])[:n]
    chans = list(zip(attrs["lr_channels"], attrs["hr_channels"], strict=True))
    fig, axes = plt.subplots(len(chans), 2 * len(pick), figsize=(2.2 * 2 * len(pick), 2.2 * len(chans)),
                             squeeze=False)
    for r, (lc, hc) in enumerate(chans):
        for k, i in enumerate(pick):
            vmin, vmax = np.nanpercentile(hr[i, r], [1, 99])
            # clouds white
            cmap = "gray_r" if hr_sensor.channel(hc).quantity == "brightness_temperature" else "gray"
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
