"""Sensor and sensor-pair registry, declared in ``configs/sensors.yaml``."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import build, config_path, read_yaml, require
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


@dataclass
class FileFormat:
    reader: str
    patterns: list[str]
    time_key: str = "start_time"
    time_offset_s: float = 0.0  # added to the file-name time to get the nominal slot
    cycle_key: str | None = None  # a repeat-cycle counter in the name (FCI) defines the slot instead
    # the format's own repeat cycle where it differs from the sensor's (ABI: full disk 10 min,
    # CONUS 5 min, mesoscale 1 min); slots and time tolerances follow it
    repeat_cycle_minutes: float | None = None

    def validate(self, where):
        require(self.repeat_cycle_minutes is None or self.repeat_cycle_minutes > 0, where,
                "repeat_cycle_minutes must be > 0")


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
