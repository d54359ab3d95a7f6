"""Archive index: which files hold the scene of a sensor at a date/time.

Walks a directory tree once, recognises real operational file names with the patterns of
``configs/sensors.yaml`` (trollsift syntax, as satpy uses), maps each file to its nominal slot,
and groups files of one slot (FCI's 40 body chunks, VIIRS observation + geolocation) into one
scene.  ``find`` picks the nearest slot within a tolerance and says clearly when there is none.
"""
from __future__ import annotations

import bisect
import datetime as dt
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from trollsift import Parser

from ..errors import ArchiveError, CloudSRError, InputError
from .sensors import Registry, Sensor

DATE_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y%m%dT%H%M", "%Y%m%d%H%M",
                "%Y-%m-%d")


def parse_date(text: str) -> dt.datetime:
    """Parse a command-line date (ISO ``2024-06-01T12:00`` and a few compact forms), naive UTC."""
    t = text.strip().rstrip("Z")
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(t, fmt)
        except ValueError:
            continue
    raise CloudSRError(f"date '{text}': unknown date format (use e.g. 2024-06-01T12:00)")


_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h|hour|d|day)s?\s*$")


def parse_every(text: str) -> dt.timedelta:
    """``15min``, ``1h``, ``30s``, ``1d`` -> timedelta."""
    m = _EVERY.match(text)
    if not m:
        raise CloudSRError(f"interval '{text}': expected e.g. 15min, 1h, 1d")
    n, unit = float(m.group(1)), m.group(2)
    seconds = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}[unit]
    if n * seconds < 1:  # also what would round to a zero timedelta (0.0000001s)
        raise CloudSRError(f"interval '{text}': must be at least 1 s")
    return dt.timedelta(seconds=n * seconds)


MAX_SLOTS = 1_000_000  # ~28 years of 15-min slots: a longer range is several campaigns/archives


def count_slots(start: dt.datetime, end: dt.datetime | None, every: dt.timedelta,
                limit: int = MAX_SLOTS) -> int:
    """How many slots start, start + every, ... <= end are, refused above ``limit`` before any is
    made (``2024 -> 2124 every 1min`` is 53 million: a clear error, not gigabytes of datetimes)."""
    end = end or start
    if end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    n = (end - start) // every + 1
    if n > limit:
        raise InputError(f"{start.isoformat()} to {end.isoformat()} every {every}: {n:,} slots, more than "
                         f"the {limit:,} allowed at once; split the range")
    return n


def slot_times(start: dt.datetime, end: dt.datetime | None, every: dt.timedelta) -> list[dt.datetime]:
    """start, start + every, ... up to end (inclusive); at most :data:`MAX_SLOTS`."""
    return [start + i * every for i in range(count_slots(start, end, every))]


@dataclass
class SceneFiles:
    sensor: str
    formats: tuple[str, ...]
    time: dt.datetime          # nominal slot
    files: list[Path] = field(default_factory=list)


def _round_to_slot(t: dt.datetime, minutes: float) -> dt.datetime:
    step = dt.timedelta(minutes=minutes)
    base = dt.datetime(t.year, t.month, t.day)
    n = round((t - base) / step)
    return base + n * step


def parsers(registry: Registry) -> list:
    """(sensor, format name, file-name parser, format) for every file pattern of the registry."""
    return [(s, fname, Parser(p), f) for s in registry.sensors.values()
            for fname, f in s.formats.items() for p in f.patterns]


def formats_of(files: list[str | Path], sensor: Sensor, registry: Registry) -> list[str]:
    """The formats of ``sensor`` that ``files`` are, from their names (sorted, each once): what a
    reader needs when the user gives files and no ``--format`` (an ABI mesoscale file is not CONUS).
    A file named as another sensor's is an error; files no pattern knows add nothing."""
    found = set()
    plist = parsers(registry)
    for f in files:
        hit = identify(Path(f).name, plist)
        if hit is None:
            continue
        if hit[0].name != sensor.name:
            raise InputError(f"{f}: file name of sensor {hit[0].name} (format {hit[1]}), not {sensor.name}")
        found.add(hit[1])
    return sorted(found)


def identify(name: str, parser_list: list) -> tuple[Sensor, str, dt.datetime] | None:
    """(sensor, format, nominal slot) of a real file name, or None if no pattern matches."""
    for sensor, fmt_name, parser, fmt in parser_list:
        try:
            info = parser.parse(name)
        except ValueError:
            continue
        t = info[fmt.time_key] + dt.timedelta(seconds=fmt.time_offset_s)
        cycle_minutes = sensor.cycle_minutes(fmt_name)  # ABI: the scan sector's own cycle
        if fmt.cycle_key:  # 1-based repeat cycle of the day; chunks late in the last cycle run past midnight
            day = dt.datetime(t.year, t.month, t.day)
            cycle = int(info[fmt.cycle_key])
            slot = day + (cycle - 1) * dt.timedelta(minutes=cycle_minutes)
            t = slot - dt.timedelta(days=1) if slot - t > dt.timedelta(hours=12) else slot
        elif sensor.kind == "geostationary":
            t = _round_to_slot(t, cycle_minutes)
        return sensor, fmt_name, t
    return None


class ArchiveIndex:
    def __init__(self, root: str | Path, registry: Registry):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ArchiveError(f"{self.root}: archive directory does not exist")
        self.registry = registry
        self._parsers = parsers(registry)
        self.entries: dict[tuple[str, str], dict[dt.datetime, list[Path]]] = \
            defaultdict(lambda: defaultdict(list))
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                if not name.startswith("."):  # temporary files of writers in progress
                    self._add(Path(dirpath) / name)

    def _add(self, path: Path) -> None:
        hit = identify(path.name, self._parsers)
        if hit is not None:
            sensor, fmt_name, t = hit
            self.entries[(sensor.name, fmt_name)][t].append(path)

    def times(self, sensor: str, formats: list[str]) -> list[dt.datetime]:
        """Slots for which every one of ``formats`` has files."""
        sets = [set(self.entries[(sensor, f)]) for f in formats]
        return sorted(set.intersection(*sets)) if sets else []

    def scene(self, sensor: str, formats: list[str], t: dt.datetime) -> SceneFiles:
        files = sorted(p for f in formats for p in self.entries[(sensor, f)].get(t, []))
        return SceneFiles(sensor, tuple(formats), t, files)

    def find(self, sensor: str, formats: list[str], when: dt.datetime,
             tolerance: dt.timedelta | None = None) -> SceneFiles:
        """Nearest scene to ``when`` within ``tolerance`` (default: half the formats' repeat cycle)."""
        return self.finder(sensor, formats, tolerance)(when)

    def finder(self, sensor: str, formats: list[str], tolerance: dt.timedelta | None = None):
        """:meth:`find` for many slots (a campaign's): the archive's times sorted once, then a
        bisection per slot instead of a scan of every time."""
        s: Sensor = self.registry.sensor(sensor)
        tol = tolerance if tolerance is not None else dt.timedelta(minutes=s.cycle_minutes(formats) / 2)
        times = self.times(sensor, formats)

        def find(when: dt.datetime) -> SceneFiles:
            if not times:
                raise ArchiveError(f"{self.root}: no {sensor} ({'+'.join(formats)}) files in the archive")
            i = bisect.bisect_left(times, when)
            # ties: the earlier, as before
            best = min(times[max(0, i - 1):i + 1], key=lambda t: abs(t - when))
            if abs(best - when) > tol:
                raise ArchiveError(f"{self.root}: no {sensor} scene within {tol} of {when.isoformat()} "
                                   f"(nearest: {best.isoformat()})")
            return self.scene(sensor, formats, best)
        return find

    def between(self, sensor: str, formats: list[str], start: dt.datetime,
                end: dt.datetime) -> list[SceneFiles]:
        return [self.scene(sensor, formats, t) for t in self.times(sensor, formats) if start <= t <= end]
