"""The super-resolved scene on disk: one CF NetCDF4/HDF5 file per scene, written band by band.

Layout: dimensions ``y``, ``x`` at the HR resolution with 1-D projection coordinates [m], the
scalar grid-mapping variable ``geostationary``, one variable per channel, chunked ``chunk x chunk``
and compressed (zlib + shuffle) as float32 with ``_FillValue`` NaN, or packed as int16 with
``scale_factor``/``add_offset``, ``valid_range`` [-32767, 32767] and ``_FillValue`` -32768 (CF 8.1
wants packed data signed).  Chunks with no valid pixel (space) are
never written: readers get the fill value there.  Global attributes carry the provenance.

How ranks produce one file without parallel HDF5: rank 0 creates the file (under a temporary
name) with netCDF4 and writes its own band into it; every other rank writes its band to a part
file with the *same* chunk shape and filters, compressing in parallel; rank 0 then copies the
parts' compressed chunks verbatim (``read_direct_chunk``/``write_direct_chunk``, no
recompression) and renames the file into place.  Bands start on chunk rows, so chunks map
one to one.  A file that exists under its final name is complete.
"""
from __future__ import annotations

import os
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..data.geometry import GeosGrid
from ..data.scene import GRID_MAPPING

PACK_FILL = np.int16(-32768)
PACK_MAX = 32767


@dataclass
class OutputSpec:
    channels: list[str]
    channel_attrs: dict[str, dict]  # units, standard_name, long_name, ...
    grid: GeosGrid  # the HR grid of the output
    chunk: int = 512
    packing: str = "float32"  # or "int16"
    complevel: int = 4
    pack_range: dict[str, tuple[float, float]] = field(default_factory=dict)  # physical (lo, hi) per channel
    attrs: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def chunks(self) -> tuple[int, int]:
        return min(self.chunk, self.shape[0]), min(self.chunk, self.shape[1])

    def packing_of(self, name: str) -> tuple[float, float]:
        """(scale_factor, add_offset): 2 * 32767 steps over the channel's range (-32768 is the fill)."""
        lo, hi = self.pack_range[name]
        return (hi - lo) / (2 * PACK_MAX), (hi + lo) / 2

    def pack(self, name: str, v: np.ndarray) -> np.ndarray:
        if self.packing == "float32":
            return v.astype(np.float32)
        scale, offset = self.packing_of(name)
        q = np.clip(np.rint((v - offset) / scale), -PACK_MAX, PACK_MAX)
        return np.where(np.isfinite(v), q, PACK_FILL).astype(np.int16)

    @property
    def dtype(self) -> str:
        return "f4" if self.packing == "float32" else "i2"

    @property
    def fill(self):
        return np.float32(np.nan) if self.packing == "float32" else PACK_FILL


def create_output(path: Path, spec: OutputSpec) -> None:
    """The file skeleton (dimensions, coordinates, grid mapping, empty chunked variables, attributes)."""
    import netCDF4
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        ny, nx = spec.shape
        nc.createDimension("y", ny)
        nc.createDimension("x", nx)
        for name, values, std, axis in (("x", spec.grid.x, "projection_x_coordinate", "X"),
                                        ("y", spec.grid.y, "projection_y_coordinate", "Y")):
            v = nc.createVariable(name, "f8", (name,))
            v.setncatts({"standard_name": std, "units": "m", "axis": axis})
            v[:] = values
        gm = nc.createVariable(GRID_MAPPING, "i4", ())
        gm.setncatts(spec.grid.cf_grid_mapping())
        for name in spec.channels:
            v = nc.createVariable(name, spec.dtype, ("y", "x"), zlib=True, complevel=spec.complevel, shuffle=True,
                                  chunksizes=spec.chunks, fill_value=spec.fill)
            attrs = dict(spec.channel_attrs.get(name, {}), grid_mapping=GRID_MAPPING)
            if spec.packing == "int16":
                scale, offset = spec.packing_of(name)
                attrs.update(scale_factor=np.float32(scale), add_offset=np.float32(offset),
                             valid_range=np.array([-PACK_MAX, PACK_MAX], np.int16))
            v.setncatts(attrs)
        nc.setncatts(spec.attrs)


def encode_chunk(block: np.ndarray, chunks: tuple[int, int], fill, level: int) -> bytes:
    """HDF5's shuffle + deflate filters, done here so that compression runs in worker threads
    (zlib releases the GIL) beside the model instead of inside h5py's lock.  Edge chunks are
    stored full-size, padded with the fill value, as HDF5 stores them."""
    if block.shape != chunks:
        full = np.full(chunks, fill, block.dtype)
        full[:block.shape[0], :block.shape[1]] = block
        block = full
    shuffled = np.ascontiguousarray(block).view(np.uint8).reshape(-1, block.dtype.itemsize).T.tobytes()
    return zlib.compress(shuffled, level)


class BandSink:
    """Rows [row0, row1) of every channel, into the output (rank 0) or a part file (other ranks).

    Chunks are packed and compressed by a thread pool and stored raw (``write_direct_chunk``) in
    submission order by the calling thread (h5py is not thread-safe); at most ``2 * threads``
    chunks are in flight, so memory stays bounded."""

    def __init__(self, path: Path, spec: OutputSpec, row0: int, row1: int, part: bool, threads: int = 2):
        self.spec, self.row0, self.row1, self.path = spec, row0, row1, path
        self.offset = row0 if part else 0  # where the band starts inside this file
        if part:
            self.h5 = h5py.File(path, "w")
            for name in spec.channels:
                self.h5.create_dataset(name, shape=(row1 - row0, spec.shape[1]), maxshape=(None, spec.shape[1]),
                                       dtype=spec.dtype, chunks=spec.chunks, compression="gzip",
                                       compression_opts=spec.complevel, shuffle=True, fillvalue=spec.fill)
        else:
            self.h5 = h5py.File(path, "r+")
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="chunk-deflate")
        self.pending: deque = deque()
        self.limit = 2 * max(1, threads)
        self.chunks_written = 0

    def _encode(self, name: str, block: np.ndarray) -> bytes:
        return encode_chunk(self.spec.pack(name, block), self.spec.chunks, self.spec.fill, self.spec.complevel)

    def write(self, row: int, block: np.ndarray) -> None:
        """(C, n, W) physical values for global rows [row, row + n), starting on a chunk row."""
        n = block.shape[1]
        cr, cc = self.spec.chunks
        assert self.row0 <= row and row + n <= self.row1 and (row - self.row0) % cr == 0
        for k, name in enumerate(self.spec.channels):
            for c in range(0, block.shape[2], cc):
                part = block[k, :, c:c + cc]
                if np.isfinite(part).any():  # all-space chunks stay unallocated: readers see the fill
                    fut = self.pool.submit(self._encode, name, part.copy())
                    self.pending.append((name, (row - self.offset, c), fut))
            self._drain(self.limit)

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            name, offset, fut = self.pending.popleft()
            self.h5[name].id.write_direct_chunk(offset, fut.result(), 0)
            self.chunks_written += 1

    def close(self) -> None:
        try:
            self._drain(0)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.h5.close()


def merge_part(output: Path, part: Path, row0: int, channels: list[str]) -> int:
    """Copy a part file's compressed chunks into the output at row offset ``row0``; returns chunks copied."""
    n = 0
    with h5py.File(part, "r") as src, h5py.File(output, "r+") as dst:
        for name in channels:
            s, d = src[name].id, dst[name].id
            for i in range(s.get_num_chunks()):
                info = s.get_chunk_info(i)
                mask, data = s.read_direct_chunk(info.chunk_offset)
                d.write_direct_chunk((info.chunk_offset[0] + row0, info.chunk_offset[1]), data, mask)
                n += 1
    return n


def part_path(final: Path, rank: int) -> Path:
    return final.parent / f".{final.name}.rank{rank}.part"


def remove_stale(final: Path) -> None:
    """Temporary files a killed earlier attempt at this output left behind."""
    for p in final.parent.glob(f".{final.name}.*part"):
        p.unlink(missing_ok=True)


def publish(tmp: Path, final: Path) -> None:
    """fsync and atomically rename: a file under the final name is always complete."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
