"""Sensor and sensor-pair registry, declared in ``configs/sensors.yaml``."""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from trollsift import Parser

from ..config import build, config_path, key_of, read_yaml, require
from ..errors import ConfigError

Quantity = Literal["reflectance", "brightness_temperature"]
UNITS = {"reflectance": "%", "brightness_temperature": "K"}
STANDARD_NAMES = {"reflectance": "toa_bidirectional_reflectance",
                  "brightness_temperature": "toa_brightness_temperature"}


@dataclass
class Channel:
    wavelength_um: float
    quantity: Quantity
    norm: tuple[float, float]
    resolution_m: float
    psf_fwhm_px: float = 1.2
    noise: float = 0.0
    product: str | None = None  # file product carrying the channel, where a sensor has several
    name: str = ""

    @property
    def units(self) -> str:
        return UNITS[self.quantity]

    def validate(self, where):
        require(self.norm[1] > self.norm[0], where, "norm must be [lo, hi] with hi > lo")
        require(self.resolution_m > 0, where, "resolution_m must be > 0")


_FIELD = re.compile(r"\{([A-Za-z_]\w*)(:[^{}]*)?\}")  # a trollsift field: {name} or {name:spec}


def _satpy_reader_files(reader: str) -> list[Path]:
    """satpy's own ``etc/readers/<reader>.yaml``, then those of ``SATPY_CONFIG_PATH`` (later ones
    override, as in satpy), found without importing satpy: importing it costs every CLI process
    ~1.4 s, and the registry is loaded by all of them."""
    spec = importlib.util.find_spec("satpy")
    roots = [Path(loc) / "etc" for loc in (spec.submodule_search_locations or [])] if spec else []
    roots += [Path(p) for p in os.environ.get("SATPY_CONFIG_PATH", "").split(os.pathsep) if p]
    return [f for f in (r / "readers" / f"{reader}.yaml" for r in roots) if f.is_file()]


_PYTHON_TAG = re.compile(r"!!python/\S+")


@cache
def _satpy_file_types(reader: str) -> dict[str, tuple[str, ...]] | None:
    """``file_types: <type>: file_patterns`` of satpy's reader ``reader`` (None: no such reader),
    read from its YAML definitions without importing the reader module or opening any data file."""
    files = _satpy_reader_files(reader)
    if not files:
        return None
    types: dict[str, tuple[str, ...]] = {}
    for f in files:
        # satpy's !!python/name: tags name its reader classes; dropped, so safe_load reads the rest
        data = yaml.safe_load(_PYTHON_TAG.sub("", Path(f).read_text())) or {}
        for name, ft in (data.get("file_types") or {}).items():
            if isinstance(ft, dict) and "file_patterns" in ft:
                types[name] = tuple(ft["file_patterns"])
    return types


@dataclass
class PatternsFrom:
    """A format's file-name patterns taken from satpy's reader definition instead of copied from it:
    the ``file_patterns`` of satpy file types ``file_types`` of the format's reader, those having
    every field of ``with_fields`` and none of ``without_fields``, then specialised: ``fix`` sets a
    field to a fixed text (ABI ``scene_abbr: C``, one format per scan sector), ``replace`` swaps a
    literal text for another (each must occur once in every selected pattern)."""
    file_types: list[str]
    with_fields: list[str] = field(default_factory=list)
    without_fields: list[str] = field(default_factory=list)
    fix: dict[str, str] = field(default_factory=dict)
    replace: dict[str, str] = field(default_factory=dict)

    def validate(self, where):
        require(bool(self.file_types), where, "file_types: at least one satpy file type required")

    def resolve(self, reader: str, where: str) -> list[str]:
        """The trollsift patterns, in satpy's order (each once); errors name the key that fails."""
        types = _satpy_file_types(reader)
        if types is None:
            raise ConfigError(f"{where}: satpy has no reader '{reader}'")
        found = []
        for ft in self.file_types:
            if ft not in types:
                raise ConfigError(f"{key_of(where, 'file_types')}: satpy reader {reader} has no file type "
                                  f"'{ft}' (known: {', '.join(types)})")
            found += [(ft, p) for p in types[ft]]
        fields_of = {p: {m.group(1) for m in _FIELD.finditer(p)} for _, p in found}
        for key in ("with_fields", "without_fields"):
            for name in getattr(self, key):
                if not any(name in fs for fs in fields_of.values()):
                    raise ConfigError(f"{key_of(where, key)}: no pattern of satpy's {reader} "
                                      f"{'/'.join(self.file_types)} has a field '{name}'")
        chosen = [(ft, p) for ft, p in found
                  if set(self.with_fields) <= fields_of[p] and not set(self.without_fields) & fields_of[p]]
        if not chosen:
            raise ConfigError(f"{where}: no pattern of satpy's {reader} {'/'.join(self.file_types)} has "
                              f"fields {self.with_fields} and none of {self.without_fields}")
        out: list[str] = []
        for ft, p in chosen:
            pat = p
            for name, value in self.fix.items():
                m = next((m for m in _FIELD.finditer(pat) if m.group(1) == name), None)
                if m is None:
                    raise ConfigError(f"{key_of(where, 'fix')}.{name}: no field {{{name}}} in satpy's "
                                      f"{reader} {ft} pattern '{p}'")
                if "{" in value or "}" in value or not Parser(m.group(0)).validate(value):
                    raise ConfigError(f"{key_of(where, 'fix')}.{name}: '{value}' does not fit the field "
                                      f"{m.group(0)} of satpy's {reader} {ft} pattern")
                pat = pat[:m.start()] + value + pat[m.end():]
            for old, new in self.replace.items():
                if pat.count(old) != 1:
                    raise ConfigError(f"{key_of(where, 'replace')}.{old}: occurs {pat.count(old)} times "
                                      f"(must be once) in satpy's {reader} {ft} pattern '{p}'")
                pat = pat.replace(old, new)
            if pat not in out:
                out.append(pat)
        return out


@dataclass
class FileFormat:
    reader: str
    # trollsift file-name patterns: given here (a site's own product), or taken from satpy's reader
    # definition by ``patterns_from`` (resolved into ``patterns`` when the registry is loaded)
    patterns: list[str] = field(default_factory=list)
    patterns_from: PatternsFrom | None = None
    time_key: str = "start_time"
    time_offset_s: float = 0.0  # added to the file-name time to get the nominal slot
    cycle_key: str | None = None  # a repeat-cycle counter in the name (FCI) defines the slot instead
    # the format's own repeat cycle where it differs from the sensor's (ABI: full disk 10 min,
    # CONUS 5 min, mesoscale 1 min); slots and time tolerances follow it
    repeat_cycle_minutes: float | None = None

    def validate(self, where):
        require(self.repeat_cycle_minutes is None or self.repeat_cycle_minutes > 0, where,
                "repeat_cycle_minutes must be > 0")
        if self.patterns_from is not None:
            require(not self.patterns, key_of(where, "patterns_from"),
                    "give patterns or patterns_from, not both")
            self.patterns = self.patterns_from.resolve(self.reader, key_of(where, "patterns_from"))
        require(bool(self.patterns), key_of(where, "patterns"),
                "at least one file-name pattern required (or patterns_from: satpy file types)")


@dataclass
class Sensor:
    long_name: str
    platforms: list[str]
    kind: Literal["geostationary", "swath"]
    formats: dict[str, FileFormat]
    channels: dict[str, Channel]
    sub_lon: float = 0.0
    full_disk: int = 0
    repeat_cycle_minutes: float = 15.0
    # reflectance channels carry no signal where the sun is lower than this: read as NaN there
    night_zenith_deg: float = 85.0
    name: str = ""

    def validate(self, where):
        require(bool(self.channels), where, "channels: at least one channel required")
        require(bool(self.formats), where, "formats: at least one file format required")
        for n, ch in self.channels.items():
            ch.name = n

    def cycle_minutes(self, formats: str | list[str]) -> float:
        """Repeat cycle of a scene read from ``formats``: the shortest of theirs (the sensor's where a
        format has none), which bounds how far apart in time its files may be."""
        fmts = [formats] if isinstance(formats, str) else formats
        return min((self.file_format(f).repeat_cycle_minutes or self.repeat_cycle_minutes for f in fmts),
                   default=self.repeat_cycle_minutes)

    def file_format(self, name: str) -> FileFormat:
        if name not in self.formats:
            raise ConfigError(f"sensor {self.name}: unknown format '{name}' (known: "
                              f"{', '.join(self.formats)})")
        return self.formats[name]

    def channel(self, name: str) -> Channel:
        if name not in self.channels:
            raise ConfigError(f"sensor {self.name}: unknown channel '{name}' (known: "
                              f"{', '.join(self.channels)})")
        return self.channels[name]


@dataclass
class Simulation:
    """Cross-sensor differences the synthetic archive puts between LR and HR (Stage 1's job)."""
    hr_dt_minutes: float = 4.0
    misregistration_lr_px: tuple[float, float] = (0.3, -0.2)
    spectral_gain: list[float] = field(default_factory=list)
    spectral_offset: list[float] = field(default_factory=list)


@dataclass
class SensorPair:
    lr: str
    hr: str
    channels: list[tuple[str, str]]
    lr_formats: list[str]
    hr_formats: list[str]
    scale: int = 4
    max_dt_minutes: float = 10.0
    simulate: Simulation = field(default_factory=Simulation)
    name: str = ""

    @property
    def self_supervised(self) -> bool:
        """One sensor on both sides: the LR input is the degradation of the HR band itself (no
        cross-sensor differences, so no Stage 1 to learn them)."""
        return self.lr == self.hr

    def validate(self, where):
        require(self.scale in (2, 3, 4, 8), where, f"scale: must be 2, 3, 4 or 8, got {self.scale}")
        require(len(self.channels) > 0, where, "channels: at least one (LR, HR) pair required")
        if self.self_supervised:
            require(all(a == b for a, b in self.channels), where,
                    "channels: a self-supervised pair (lr == hr) maps every channel onto itself")
        n = len(self.channels)
        for key in ("spectral_gain", "spectral_offset"):
            v = getattr(self.simulate, key)
            require(len(v) in (0, n), where,
                    f"simulate.{key}: needs {n} values (one per channel), got {len(v)}")

    @property
    def lr_channels(self) -> list[str]:
        return [a for a, _ in self.channels]

    @property
    def hr_channels(self) -> list[str]:
        return [b for _, b in self.channels]


@dataclass
class Registry:
    sensors: dict[str, Sensor]
    pairs: dict[str, SensorPair] = field(default_factory=dict)
    source: str = ""

    def validate(self, where):
        for n, s in self.sensors.items():
            s.name = n
        for n, p in self.pairs.items():
            p.name = n
            for role, sname, fmts in (("lr", p.lr, p.lr_formats), ("hr", p.hr, p.hr_formats)):
                require(sname in self.sensors, f"{where}: pairs.{n}.{role}", f"unknown sensor '{sname}'")
                for fmt in fmts:
                    require(fmt in self.sensors[sname].formats, f"{where}: pairs.{n}.{role}_formats",
                            f"unknown format '{fmt}' of sensor {sname}")
            for i, (a, b) in enumerate(p.channels):
                require(a in self.sensors[p.lr].channels, f"{where}: pairs.{n}.channels[{i}]",
                        f"'{a}' is not a {p.lr} channel")
                require(b in self.sensors[p.hr].channels, f"{where}: pairs.{n}.channels[{i}]",
                        f"'{b}' is not a {p.hr} channel")

    def sensor(self, name: str) -> Sensor:
        if name not in self.sensors:
            raise ConfigError(f"{self.source}: unknown sensor '{name}' (known: {', '.join(self.sensors)})")
        return self.sensors[name]

    def pair(self, name: str) -> SensorPair:
        if name not in self.pairs:
            raise ConfigError(f"{self.source}: unknown sensor pair '{name}' (known: {', '.join(self.pairs)})")
        return self.pairs[name]

    def norm_arrays(self, sensor: str, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) float32 arrays for a channel list: the normalisation that travels with checkpoints."""
        s = self.sensor(sensor)
        lo = np.array([s.channel(c).norm[0] for c in channels], np.float32)
        hi = np.array([s.channel(c).norm[1] for c in channels], np.float32)
        return lo, hi


@lru_cache(maxsize=8)
def _load(path: str) -> Registry:
    reg = build(Registry, read_yaml(path), f"{path}: ")
    reg.source = path
    return reg


def load_registry(path: str | Path = "sensors.yaml") -> Registry:
    return _load(str(config_path(path)))
