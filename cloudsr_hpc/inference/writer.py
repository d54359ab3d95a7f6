"""The super-resolved scene on disk: one CF NetCDF4/HDF5 file per scene, written band by band.

Layout: dimensions ``y``, ``x`` at the HR resolution with 1-D projection coordinates [m], the
scalar grid-mapping variable ``geostationary``, one variable per channel, chunked ``chunk x chunk``
and compressed (zlib + shuffle) as float32 with ``_FillValue`` NaN, or packed as int16 with
``scale_factor``/``add_offset``, ``valid_range`` [-32767, 32767] and ``_FillValue`` -32768 (CF 8.1
wants packed data signed).  Chunks with no valid pixel (space) are
never written: readers get the fill value there.  Global attributes carry the provenance.
An ensemble (``members`` > 1) stores under each channel's name the ensemble mean
(``cell_methods: "realization: mean"``), beside it ``<channel>_std`` (``realization:
standard_deviation``) and, when kept, the members as ``<channel>_members`` along a ``member``
dimension (chunks ``1 x chunk x chunk``).  CF wants a cell method's name to be a coordinate of
the variable, and a 2-D statistic has no member axis: the collapsed axis is the scalar coordinate
``realization`` (CF standard name, value N), as CF 7.3.4 does for a collapsed dimension.

How ranks produce one file without parallel HDF5: rank 0 creates the file (under a temporary
name) with netCDF4 and writes its own band into it; every other rank writes its band to a part
file with the *same* chunk shape and filters, compressing in parallel; rank 0 then copies the
parts' compressed chunks verbatim (``read_direct_chunk``/``write_direct_chunk``, no
recompression) and renames the file into place.  Bands start on chunk rows, so chunks map
one to one.  A file that exists under its final name is complete.

Integrity: every chunked variable carries HDF5's Fletcher32 filter, so each stored chunk holds
its own checksum and any reader (netCDF4, h5py, xarray) refuses a chunk whose bytes changed;
the digest of the chunk index (which chunks, their stored sizes) is recorded in a global
attribute before the rename.  :func:`verify_chunks` checks the index cheaply, and with ``full``
reads every chunk back.  Chunks are encoded here by the filter pipeline the dataset actually
declares (netCDF-C: checksum of the raw chunk, then shuffle + deflate; only the checksum at
``complevel`` 0), never by assumption.

Concurrency: a run's temporaries are named with a token of its own and guarded by an
``flock``'ed lock file (:class:`OutputClaim`), so two runs on one output never delete each
other's files; only those of dead runs are cleaned up.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import secrets
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..core.timing import StageClock
from ..data.geometry import GeosGrid
from ..data.scene import GRID_MAPPING
from ..errors import InputError, OutputError, one_line

STD_SUFFIX, MEMBERS_SUFFIX = "_std", "_members"
ENSEMBLE_AXIS = "realization"  # the scalar coordinate the statistics' cell_methods name
PACK_FILL = np.int16(-32768)
PACK_MAX = 32767
FLETCHER32, SHUFFLE, DEFLATE = h5py.h5z.FILTER_FLETCHER32, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE


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
    members: int = 1  # > 1: an ensemble (mean under the channel's name, its standard deviation beside it)
    keep_members: bool = False  # also every member, along a ``member`` dimension
    deflate: str = "auto"  # who writes the deflate streams: zlib, isal, auto (:func:`deflater`)

    @property
    def variables(self) -> list[str]:
        return variable_names(self.channels, self.members, self.keep_members)

    @property
    def planes(self) -> list[tuple[str, int | None]]:
        """(variable, member index or None) of each (rows, W) plane of a band block, in block order:
        the channels (ensemble means), their standard deviations, then member by member."""
        out: list[tuple[str, int | None]] = [(v, None) for v in self.variables
                                             if not v.endswith(MEMBERS_SUFFIX)]
        if self.members > 1 and self.keep_members:
            out += [(c + MEMBERS_SUFFIX, m) for m in range(self.members) for c in self.channels]
        return out

    def channel_of(self, name: str) -> str:
        for suffix in (STD_SUFFIX, MEMBERS_SUFFIX):
            if name.endswith(suffix) and name[:-len(suffix)] in self.channels:
                return name[:-len(suffix)]
        return name

    def dims_of(self, name: str) -> tuple[str, ...]:
        return ("member", "y", "x") if name.endswith(MEMBERS_SUFFIX) else ("y", "x")

    def chunks_of(self, name: str) -> tuple[int, ...]:
        return (1, *self.chunks) if name.endswith(MEMBERS_SUFFIX) else self.chunks

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def chunks(self) -> tuple[int, int]:
        return min(self.chunk, self.shape[0]), min(self.chunk, self.shape[1])

    def packing_of(self, name: str) -> tuple[float, float]:
        """(scale_factor, add_offset): 2 * 32767 steps over the channel's range (-32768 is the fill);
        a standard deviation over [0, half the range]."""
        lo, hi = self.pack_range[self.channel_of(name)]
        if name.endswith(STD_SUFFIX) and name != self.channel_of(name):
            lo, hi = 0.0, (hi - lo) / 2
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


def variable_names(channels: list[str], members: int = 1, keep_members: bool = False) -> list[str]:
    """The data variables of an output: one per channel, plus ``_std`` (and ``_members``) for an ensemble."""
    names = list(channels)
    if members > 1:
        names += [c + STD_SUFFIX for c in channels]
        if keep_members:
            names += [c + MEMBERS_SUFFIX for c in channels]
    return names


def _variable_attrs(spec: OutputSpec, name: str) -> dict:
    chan = spec.channel_of(name)
    attrs = dict(spec.channel_attrs.get(chan, {}), grid_mapping=GRID_MAPPING)
    if spec.members > 1:
        long = attrs.get("long_name", chan)
        if name.endswith(STD_SUFFIX) and name != chan:
            attrs.update(long_name=f"{long} (ensemble standard deviation, {spec.members} members)",
                         cell_methods=f"{ENSEMBLE_AXIS}: standard_deviation", coordinates=ENSEMBLE_AXIS)
        elif name == chan:
            attrs.update(long_name=f"{long} (ensemble mean, {spec.members} members)",
                         cell_methods=f"{ENSEMBLE_AXIS}: mean", coordinates=ENSEMBLE_AXIS)
        else:
            attrs.update(long_name=f"{long} (ensemble members)")
    return attrs


def create_output(path: Path, spec: OutputSpec) -> None:
    """The file skeleton (dimensions, coordinates, grid mapping, empty chunked variables, attributes)."""
    import netCDF4
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        ny, nx = spec.shape
        nc.createDimension("y", ny)
        nc.createDimension("x", nx)
        for name, values, std, axis in (("x", spec.grid.x, "projection_x_coordinate", "X"),
                                        ("y", spec.grid.y, "projection_y_coordinate", "Y")):
            v = nc.createVariable(name, "f8", (name,), fletcher32=True)
            v.setncatts({"standard_name": std, "units": "m", "axis": axis})
            v[:] = values
        gm = nc.createVariable(GRID_MAPPING, "i4", ())
        gm.setncatts(spec.grid.cf_grid_mapping())
        if spec.members > 1:  # the collapsed member axis of the statistics (CF 7.3.4), then the members
            r = nc.createVariable(ENSEMBLE_AXIS, "i4", ())
            r.setncatts({"standard_name": "realization", "units": "1",
                         "long_name": f"ensemble members 0..{spec.members - 1} (collapsed)",
                         "comment": f"statistics over {spec.members} members"})
            r.assignValue(spec.members)
        if spec.members > 1 and spec.keep_members:
            nc.createDimension("member", spec.members)
            m = nc.createVariable("member", "i4", ("member",))
            m.setncatts({"standard_name": "realization", "long_name": "ensemble member", "units": "1"})
            m[:] = np.arange(spec.members, dtype=np.int32)
        for name in spec.variables:
            # complevel 0 means no deflate (and no shuffle) filter at all: netCDF-C drops them
            v = nc.createVariable(name, spec.dtype, spec.dims_of(name), zlib=spec.complevel > 0,
                                  complevel=spec.complevel, shuffle=spec.complevel > 0, fletcher32=True,
                                  chunksizes=spec.chunks_of(name), fill_value=spec.fill)
            attrs = _variable_attrs(spec, name)
            if spec.packing == "int16":
                scale, offset = spec.packing_of(name)
                attrs.update(scale_factor=np.float32(scale), add_offset=np.float32(offset),
                             valid_range=np.array([-PACK_MAX, PACK_MAX], np.int16))
            v.setncatts(attrs)
        nc.setncatts(spec.attrs)


def fletcher32(data: bytes) -> int:
    """HDF5's ``H5_checksum_fletcher32``: big-endian 16-bit words (an odd last byte padded with
    zero), both sums in end-around-carry arithmetic (0 only for all-zero data, else 1..65535)."""
    if len(data) % 2:
        data += b"\0"
    w = np.frombuffer(data, ">u2").astype(np.uint64)
    if not w.any():
        return 0
    s1 = int(w.sum()) % 65535
    s2 = int(np.dot(w, _sum2_weights(len(w)))) % 65535  # word i enters sum2 n - i times
    return (s2 or 65535) << 16 | (s1 or 65535)  # a positive sum folds to 1..65535, never 0


@functools.lru_cache(maxsize=8)  # every chunk of a dataset has the same length
def _sum2_weights(n: int) -> np.ndarray:
    return np.arange(n, 0, -1, dtype=np.uint64) % 65535  # < 2**16: n * 2**32 stays inside uint64


def filters_of(dset) -> tuple:
    """The dataset's filter pipeline in order, as ((filter id, params), ...)."""
    dcpl = dset.id.get_create_plist()
    return tuple((f[0], tuple(f[2])) for f in (dcpl.get_filter(i) for i in range(dcpl.get_nfilters())))


def check_filters(path: Path, name: str, filters: tuple) -> tuple:
    unknown = [f for f, _ in filters if f not in (FLETCHER32, SHUFFLE, DEFLATE)]
    if unknown:
        raise OutputError(f"{path}: variable {name} has HDF5 filter(s) {unknown} this writer cannot encode")
    return filters


def deflater(engine: str = "auto"):
    """``compress(data, level)`` writing zlib streams: zlib's own, or ISA-L's through python-isal
    (``isal``; ``auto``: ISA-L when installed).  Any inflater reads either -- the file's deflate
    filter records a level, which decoding never needs.  ISA-L has levels 1-3: zlib's 1-3, 4-6,
    7-9 map onto them.  On float32 SR output ISA-L level 2 compresses ~12x faster than zlib
    level 4 to within 1 % of its size (measured: 698 vs 59 MB/s, ratio 1.559 vs 1.577)."""
    if engine in ("auto", "isal"):
        try:
            from isal import isal_zlib
        except ImportError:
            if engine == "isal":
                raise OutputError("infer.deflate: isal is not installed (pip install isal)") from None
        else:
            return lambda data, level: isal_zlib.compress(data, min(3, max(1, (level + 2) // 3)))
    return zlib.compress


def encode_chunk(block: np.ndarray, chunks: tuple[int, int], fill, filters: tuple,
                 deflate=zlib.compress) -> bytes:
    """The stored bytes of one chunk: ``filters`` (the dataset's pipeline) applied here so that
    compression runs in worker threads (zlib, ISA-L and numpy release the GIL) beside the model
    instead of inside h5py's lock; ``deflate`` from :func:`deflater`.  Edge chunks are stored
    full-size, padded with the fill value, as HDF5 stores them."""
    if block.shape != chunks:
        full = np.full(chunks, fill, block.dtype)
        full[:block.shape[0], :block.shape[1]] = block
        block = full
    data = np.ascontiguousarray(block).tobytes()
    for fid, params in filters:
        if fid == FLETCHER32:
            data += fletcher32(data).to_bytes(4, "little")
        elif fid == SHUFFLE:  # byte k of every element together; a tail shorter than an element stays
            size = params[0] if params else block.dtype.itemsize
            n = len(data) // size
            data = np.frombuffer(data, np.uint8, n * size).reshape(n, size).T.tobytes() + data[n * size:]
        elif fid == DEFLATE:
            data = deflate(data, params[0] if params else 6)
    return data


def part_dcpl(spec: OutputSpec, name: str) -> h5py.h5p.PropDCID:
    """The pipeline netCDF-C gives the output's variables, in its order (checksum first), so a part's
    chunks can be copied into the output verbatim (:func:`merge_part` checks that they agree)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(spec.chunks_of(name))
    dcpl.set_fill_value(np.array(spec.fill, spec.dtype))
    dcpl.set_fletcher32()
    if spec.complevel:
        dcpl.set_shuffle()
        dcpl.set_deflate(spec.complevel)
    return dcpl


class BandSink:
    """Rows [row0, row1) of every channel, into the output (rank 0) or a part file (other ranks).

    Chunks are packed and compressed by a thread pool and stored raw (``write_direct_chunk``) in
    submission order by the calling thread (h5py is not thread-safe); at most ``2 * threads``
    chunks are in flight, so memory stays bounded."""

    def __init__(self, path: Path, spec: OutputSpec, row0: int, row1: int, part: bool, threads: int = 2,
                 clock: StageClock | None = None):
        self.spec, self.row0, self.row1, self.path = spec, row0, row1, path
        self.clock = clock or StageClock()  # compress (thread-seconds), wait_compress, write
        self.offset = row0 if part else 0  # where the band starts inside this file
        if part:
            self.h5 = h5py.File(path, "w")
            for name in spec.variables:
                lead = (spec.members,) if len(spec.dims_of(name)) == 3 else ()
                space = h5py.h5s.create_simple((*lead, row1 - row0, spec.shape[1]),
                                               (*lead, h5py.h5s.UNLIMITED, spec.shape[1]))
                h5py.h5d.create(self.h5.id, name.encode(), h5py.h5t.py_create(np.dtype(spec.dtype)), space,
                                dcpl=part_dcpl(spec, name))
        else:
            self.h5 = h5py.File(path, "r+")
        self.filters = {name: check_filters(path, name, filters_of(self.h5[name])) for name in spec.variables}
        self.deflate = deflater(spec.deflate)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="chunk-deflate")
        self.pending: deque = deque()
        self.limit = 2 * max(1, threads)
        self.chunks_written = 0

    def _encode(self, name: str, block: np.ndarray) -> bytes:
        with self.clock("compress"):
            packed = self.spec.pack(name, block)
            return encode_chunk(packed, self.spec.chunks, self.spec.fill, self.filters[name], self.deflate)

    def write(self, row: int, block: np.ndarray) -> None:
        """(planes, n, W) physical values for global rows [row, row + n), starting on a chunk row;
        planes in :attr:`OutputSpec.planes` order (the channels when there is no ensemble)."""
        n = block.shape[1]
        cr, cc = self.spec.chunks
        assert self.row0 <= row and row + n <= self.row1 and (row - self.row0) % cr == 0
        assert block.shape[0] == len(self.spec.planes), "one block plane per output plane"
        for k, (name, member) in enumerate(self.spec.planes):
            lead = () if member is None else (member,)  # a member's chunk is (1, cr, cc): the same bytes
            for c in range(0, block.shape[2], cc):
                part = block[k, :, c:c + cc]
                if np.isfinite(part).any():  # all-space chunks stay unallocated: readers see the fill
                    fut = self.pool.submit(self._encode, name, part.copy())
                    self.pending.append((name, (*lead, row - self.offset, c), fut))
            self._drain(self.limit)

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            name, offset, fut = self.pending.popleft()
            with self.clock("wait_compress"):
                data = fut.result()
            with self.clock("write"):
                self.h5[name].id.write_direct_chunk(offset, data, 0)
            self.chunks_written += 1

    def close(self) -> None:
        try:
            self._drain(0)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.h5.close()


def merge_part(output: Path, part: Path, row0: int, variables: list[str]) -> int:
    """Copy a part file's compressed chunks into the output at row offset ``row0`` (on the
    second-to-last axis, ``y``); returns chunks copied."""
    n = 0
    with h5py.File(part, "r") as src, h5py.File(output, "r+") as dst:
        for name in variables:
            if filters_of(src[name]) != filters_of(dst[name]):  # verbatim copies need identical pipelines
                raise OutputError(f"{part}: {name} filters {filters_of(src[name])} differ from the output's "
                                  f"{filters_of(dst[name])}")
            s, d = src[name].id, dst[name].id
            for i in range(s.get_num_chunks()):
                info = s.get_chunk_info(i)
                off = tuple(info.chunk_offset)
                mask, data = s.read_direct_chunk(off)
                d.write_direct_chunk((*off[:-2], off[-2] + row0, off[-1]), data, mask)
                n += 1
    return n


# ----------------------------------------------------------------------------- temporaries of a run
def _sibling(final: Path, suffix: str) -> Path:
    return final.parent / f".{final.name}.{suffix}"


class OutputClaim:
    """One run's temporaries for ``final``: the output being assembled (rank 0), the ranks' part
    files and the lock, all named with the run's ``token``.  Rank 0 holds an exclusive ``flock``
    on the lock from before the first file exists until its files are gone; other ranks only use
    the names (``fd`` None)."""

    def __init__(self, final: Path, token: str, fd: int | None = None):
        self.final, self.token, self.fd = Path(final), token, fd

    @property
    def tmp(self) -> Path:
        return _sibling(self.final, f"{self.token}.part")

    @property
    def lock(self) -> Path:
        return _sibling(self.final, f"{self.token}.lock")

    def part(self, rank: int) -> Path:
        return _sibling(self.final, f"{self.token}.rank{rank}.part")

    def discard(self, rank: int, ranks: int = 1) -> None:
        """Remove what ``rank`` wrote (rank 0: also the other ranks' parts and the lock, last)."""
        for k in ([rank] if rank else range(1, ranks)):
            self.part(k).unlink(missing_ok=True)
        if rank == 0:
            self.tmp.unlink(missing_ok=True)
            if self.fd is not None:
                self.lock.unlink(missing_ok=True)
                os.close(self.fd)  # releases the flock
                self.fd = None


def claim_output(final: Path) -> OutputClaim:
    """Clean up what dead runs left for ``final`` and lock a fresh token for this run."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    while True:
        claim = OutputClaim(final, f"{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(claim.lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # no locks on this file system: our files look held to others, never stale
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        try:  # another run's clean-up may have taken the lock file between open and flock: retry
            if os.stat(claim.lock).st_ino == os.fstat(fd).st_ino:
                claim.fd = fd
                return claim
        except FileNotFoundError:
            pass
        os.close(fd)


def _held(lock: Path) -> bool:
    """Whether a live process holds ``lock`` (unknown -- no lock support -- counts as held)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def remove_stale(final: Path) -> list[Path]:
    """Temporary files of earlier runs at this output that no live process holds (killed runs,
    and the unlocked names of older versions); another live run's files are left alone."""
    removed = []
    prefix = f".{final.name}."
    for p in sorted(final.parent.glob(f"{prefix}*")):
        if not p.name.endswith((".part", ".lock")):
            continue
        token = p.name[len(prefix):].split(".")[0]
        if not _held(_sibling(final, f"{token}.lock")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def publish(tmp: Path, final: Path) -> None:
    """fsync and atomically rename: a file under the final name is always complete."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


# ----------------------------------------------------------------------------- verification
CHUNK_DIGEST = "chunk_index_sha256"  # global attribute: which chunks were stored, and their sizes


def _chunk_index(f: h5py.File) -> dict[str, list]:
    """{variable: [StoreInfo(chunk_offset, filter_mask, byte_offset, size), ...]} of every chunked
    variable."""
    index = {}
    for name, d in f.items():
        if isinstance(d, h5py.Dataset) and d.chunks is not None:
            infos: list = []
            # one pass over the index (get_chunk_info(i) searches it each time)
            if hasattr(d.id, "chunk_iter"):
                d.id.chunk_iter(infos.append)
            else:
                infos = [d.id.get_chunk_info(i) for i in range(d.id.get_num_chunks())]
            index[name] = infos
    return index


def _index_digest(index: dict[str, list]) -> str:
    h = hashlib.sha256()
    for name in sorted(index):
        for info in sorted(index[name], key=lambda i: tuple(i.chunk_offset)):
            h.update(f"{name}:{tuple(info.chunk_offset)}:{info.size};".encode())
    return h.hexdigest()


def record_chunk_index(path: Path) -> str:
    """Store the digest of the finished file's chunk index (variable, chunk, stored size) in its
    global attributes: a chunk that later vanishes from the index or changes size is noticed
    without reading any data.  Call after the last chunk is written, before the rename."""
    import netCDF4
    with h5py.File(path, "r") as f:
        digest = _index_digest(_chunk_index(f))
    with netCDF4.Dataset(path, "a") as nc:
        nc.setncattr(CHUNK_DIGEST, digest)
    return digest


def verify_chunks(path: Path, full: bool = False) -> int:
    """Cheap (the chunk index only): every stored chunk lies inside the file (a truncated copy
    fails), goes through all its filters, and the index matches the digest recorded at write time.
    ``full`` also reads each chunk back through HDF5's filters, which checks its Fletcher32
    checksum and its deflate stream.  Returns the number of chunks checked."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with h5py.File(path, "r") as f:
            index = _chunk_index(f)
            for name, infos in index.items():
                _check_chunks(path, name, f[name], infos, size, full)
            recorded = f.attrs.get(CHUNK_DIGEST)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py reports damaged metadata as OSError, KeyError, ValueError...
        raise InputError(f"{path}: not a readable HDF5 file ({one_line(e)[:200]})") from None
    if isinstance(recorded, bytes):
        recorded = recorded.decode()
    if recorded is not None and str(recorded) != _index_digest(index):
        raise InputError(f"{path}: its chunk index differs from the one recorded when it was written "
                         f"(a chunk lost or resized)")
    return sum(len(v) for v in index.values())


def _check_chunks(path: Path, name: str, d, infos: list, size: int, full: bool) -> None:
    if full and not d.fletcher32:
        raise InputError(f"{path}: variable {name} has no per-chunk checksums (written before outputs "
                         f"were checksummed); cannot be verified, --overwrite to redo it")
    for info in infos:
        where = f"{name} chunk at {tuple(info.chunk_offset)}"
        if info.byte_offset + info.size > size:
            raise InputError(f"{path}: truncated ({where} ends at byte {info.byte_offset + info.size}, "
                             f"the file has {size})")
        if info.filter_mask:  # HDF5 would hand out the stored bytes undecoded, unchecked
            raise InputError(f"{path}: {where} is marked to skip filters (mask {info.filter_mask}): "
                             "damaged index")
        if full:
            box = tuple(slice(o, min(o + c, s))
                        for o, c, s in zip(info.chunk_offset, d.chunks, d.shape, strict=True))
            try:  # found by lookup too (a damaged search key makes readers see fill), then decoded
                d.id.read_direct_chunk(tuple(info.chunk_offset))
                d[box]
            except OSError as e:
                raise InputError(f"{path}: {where} is corrupt ({one_line(e)[:160]})") from None
