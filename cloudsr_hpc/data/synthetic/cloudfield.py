"""A deterministic, evolving synthetic cloud scene with the statistics of real cloud imagery.

The scene lives on the geostationary projection plane (metres, :mod:`..geometry`).  Three latent
Gaussian random fields drive it:

* ``g_cloud`` (power-law spectrum) -> cloud amount; thresholding it gives sharp cloud edges and
  filaments, ``tau = tau0 * sqrt(max(g - thr, 0))`` so the edge has an infinite slope.
* ``g_top`` (steeper spectrum) + ``g_cloud`` -> cloud-top height -> cold tops 200-260 K.
* ``g_land`` (very smooth, static) -> land/ocean mask.
* ``g_tex`` (optional, ``texture_sigma > 0``; shallower spectrum, small outer scale) -> in-cloud
  texture: ``tau *= exp(sigma g_tex - sigma^2 / 2)``, a log-normal factor of mean 1.  Without it a
  cloud is a plateau of smooth ``tau`` behind a cliff edge (62 % of the gradient in the steepest 5 %
  of pixels; real imagery: 15-19 %); real optical depth is log-normal inside clouds (cells, turrets,
  holes).  It has its own random generator, so turning it on leaves the other fields' draws alone.

Each field is a sum of Fourier modes with variance ``P(k) dk^2`` and P(k) ~ k^-beta, so rasters
of different extent and resolution describe the same field.  Time enters through the modes only:
``F_k(t) = (cos(w_k t) A_k + sin(w_k t) B_k) exp(-i k.v t)`` -- exact advection by the wind ``v``
plus stationary evolution that is faster at small scales (``w_k ~ k^(2/3)``).  A coarse raster
covers the whole scene; a fine raster over the high-resolution region adds the modes beyond the
coarse Nyquist (a smooth variance-preserving crossover), so LR and HR see one consistent truth.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from ...schema import SynthCloudConfig
from ..geometry import GeosGrid, geos_to_lonlat

EPOCH = dt.datetime(2000, 1, 1)


@dataclass(frozen=True)
class CloudFieldSpec:
    seed: int = 0
    beta_cloud: float = 3.6      # P(k) ~ k^-beta of the cloud latent field (2-D, radially averaged)
    beta_top: float = 4.0
    beta_land: float = 4.5
    cloud_threshold: float = 0.25 # in units of the latent std: sets the cloud fraction (~45 %)
    tau0: float = 40.0            # optical depth scale
    wind_ms: tuple[float, float] = (12.0, 3.0)  # (east, north) advection [m/s]
    evolution_hours: float = 3.0  # decorrelation time of the largest scales
    outer_scale_m: float = 400e3  # spectrum flattens above this scale
    warp_m: float = 25e3          # RMS shear displacement (filaments); 0 = isotropic field
    # in-cloud texture: tau *= exp(sigma g_tex - sigma^2/2), g_tex a unit-std field with its own
    # spectrum k^-beta_texture flattening above texture_scale_m; 0 = off (the field as it always was)
    texture_sigma: float = 0.0
    beta_texture: float = 2.4
    texture_scale_m: float = 60e3


def cloud_spec(cloud: SynthCloudConfig, seed: int) -> CloudFieldSpec:
    """The ``synth.cloud:`` config section (:class:`..schema.SynthCloudConfig`) as a spec."""
    return CloudFieldSpec(seed=seed, **{f.name: getattr(cloud, f.name) for f in fields(cloud)})


def _freqs(n: int, step: float) -> np.ndarray:
    return 2 * np.pi * np.fft.fftfreq(n, d=step)


class LatentField:
    """One evolving Gaussian field on a raster (``GeosGrid``), band-limited to [k_lo, k_hi)."""

    def __init__(self, raster: GeosGrid, beta: float, outer_scale: float, rng: np.random.Generator,
                 k_cut: float | None = None, keep: str = "all"):
        ny, nx = raster.shape
        # 1-D wavenumber vectors broadcast to 2-D: a full disk must not hold 2-D float64 k arrays
        self.kx = _freqs(nx, raster.step)[None, :].astype(np.float32)
        self.ky = -_freqs(ny, raster.step)[:, None].astype(np.float32)  # rows run south; v is north-positive
        k = np.hypot(self.kx, self.ky)
        k0 = 2 * np.pi / outer_scale
        dk2 = (2 * np.pi / (nx * raster.step)) * (2 * np.pi / (ny * raster.step))
        amp = np.sqrt((k ** 2 + k0 ** 2) ** (-beta / 2) * dk2).astype(np.float32)
        amp[0, 0] = 0.0
        if k_cut is not None:  # variance-preserving crossover between coarse and fine rasters
            w = 0.5 * (1 - np.tanh(4 * (k / k_cut - 1)))  # ~1 below k_cut, ~0 above
            amp *= np.sqrt(w) if keep == "low" else np.sqrt(1 - w)
        self.a = self._draw(amp, rng)
        self.b = self._draw(amp, rng)
        self.k0 = k0
        self.raster = raster
        self.norm = np.sqrt(raster.shape[0] * raster.shape[1])

    @staticmethod
    def _draw(amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        re = rng.standard_normal(amp.shape, dtype=np.float32)
        im = rng.standard_normal(amp.shape, dtype=np.float32)
        return ((re + 1j * im) * (amp / np.sqrt(2))).astype(np.complex64)

    def render(self, t_s: float, wind: tuple[float, float], rate: float) -> np.ndarray:
        # t_s is large (seconds since 2000): phases are formed in float64 and reduced mod 2 pi
        k = np.hypot(self.kx.astype(np.float64), self.ky.astype(np.float64))
        # small scales evolve faster
        phase = np.mod((np.maximum(k, self.k0) / self.k0) ** (2 / 3) * (rate * t_s), 2 * np.pi)
        phase = phase.astype(np.float32)
        adv = np.mod((self.kx.astype(np.float64) * wind[0] + self.ky.astype(np.float64) * wind[1]) * t_s,
                     2 * np.pi)
        spec = (np.cos(phase) * self.a + np.sin(phase) * self.b) * np.exp(-1j * adv).astype(np.complex64)
        return (np.fft.ifft2(spec).real * spec.size).astype(np.float32)


def _subgrid_coords(raster: GeosGrid, grid: GeosGrid) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (row, col) of ``grid``'s pixel centres in ``raster``."""
    rows = (raster.y[0] - grid.y) / raster.step
    cols = (grid.x - raster.x[0]) / raster.step
    return np.meshgrid(rows, cols, indexing="ij")


class CloudScene:
    """Truth rasters of the scene: a coarse one over ``domain`` and a fine one over ``region``."""

    def __init__(self, spec: CloudFieldSpec, domain: GeosGrid, region: GeosGrid | None = None):
        self.spec, self.domain, self.region = spec, domain, region
        rng = np.random.default_rng(spec.seed)
        k_cut = np.pi / domain.step * 0.5 if region is not None else None
        # the same draw order for every scene size keeps a seed's large scales the same
        self.coarse = {name: LatentField(domain, beta, spec.outer_scale_m, rng, k_cut, "low")
                       for name, beta in (("cloud", spec.beta_cloud), ("top", spec.beta_top))}
        self.land = LatentField(domain, spec.beta_land, 2e6, rng)
        self.fine = {}
        if region is not None:
            self.fine = {name: LatentField(region, beta, spec.outer_scale_m, rng, k_cut, "high")
                         for name, beta in (("cloud", spec.beta_cloud), ("top", spec.beta_top))}
        if spec.texture_sigma > 0:  # its own generator: the draws above stay those of the seed
            rng_tex = np.random.default_rng([spec.seed, 1])
            self.coarse["texture"] = LatentField(domain, spec.beta_texture, spec.texture_scale_m, rng_tex,
                                                 k_cut, "low")
            if region is not None:
                self.fine["texture"] = LatentField(region, spec.beta_texture, spec.texture_scale_m,
                                                   rng_tex, k_cut, "high")
        self._std = {name: self._latent_std(name) for name in self.coarse}
        if "texture" in self._std:  # the real part holds half of sum |a|^2: truly unit std, so that
            self._std["texture"] /= np.sqrt(2.0)  # sigma is the log-normal's (cloud/top keep ~0.71)
        self._cache: dict = {}

    def _latent_std(self, name: str) -> float:
        var = np.sum(np.abs(self.coarse[name].a) ** 2)
        if self.fine:
            var += np.sum(np.abs(self.fine[name].a) ** 2)
        return float(np.sqrt(var))

    def latent(self, raster: GeosGrid, when: dt.datetime) -> dict[str, np.ndarray]:
        """Latent fields (unit std) on ``raster`` (the domain itself or the fine region)."""
        t = (when - EPOCH).total_seconds()
        rate = 1.0 / (self.spec.evolution_hours * 3600.0)
        # LatentField evolves scales near its outer scale at ``rate``: the texture's rate is set so
        # that a given wavenumber evolves as fast as in the cloud field (one small-scale lifetime)
        rates = {"texture": rate * (self.spec.outer_scale_m / self.spec.texture_scale_m) ** (2 / 3)}
        out = {}
        for name, field in self.coarse.items():
            g = field.render(t, self.spec.wind_ms, rates.get(name, rate))
            if raster is not self.domain:
                r, c = _subgrid_coords(self.domain, raster)
                g = ndimage.map_coordinates(g, [r, c], order=3, mode="wrap").astype(np.float32)
                g += self.fine[name].render(t, self.spec.wind_ms, rates.get(name, rate))
            out[name] = g / self._std[name]
        warp = self._warp_coords(raster, t, rate)
        for name in ("cloud", "texture"):  # the texture is stretched into the same filaments
            if warp is not None and name in out:
                out[name] = ndimage.map_coordinates(out[name], warp, order=1, mode="nearest")
                out[name] = out[name].astype(np.float32)
        land = self.land.render(0.0, (0.0, 0.0), 0.0)
        if raster is not self.domain:
            r, c = _subgrid_coords(self.domain, raster)
            land = ndimage.map_coordinates(land, [r, c], order=1, mode="wrap")
        out["land"] = (land / land.std() > 0.4).astype(np.float32)
        return out

    def _warp_coords(self, raster: GeosGrid, t: float, rate: float) -> list[np.ndarray] | None:
        """Source (row, col) of each pixel of ``raster`` that stretches the cloud field along the
        streamlines of a smooth, divergence-free flow (None: ``warp_m`` 0, no warp).

        Gaussian fields are isotropic blobs; real cloud fields have filaments and streets, made
        by shear.  The displacement d ~ (ds/dy, -ds/dx) of a smooth stream function s (the
        large-scale part of ``top``), scaled to an RMS of ``warp_m``, is computed on the coarse
        raster only, so LR and HR warp alike.  Smoothing s keeps the strain below one (no folds)."""
        if self.spec.warp_m <= 0:
            return None
        s = self.coarse["top"].render(t, self.spec.wind_ms, rate)
        s = ndimage.gaussian_filter(s, 40e3 / self.domain.step, mode="wrap")
        ds_drow, ds_dcol = np.gradient(s)
        norm = self.spec.warp_m / max(float(np.sqrt(np.mean(ds_drow ** 2 + ds_dcol ** 2))), 1e-12)
        d_east, d_north = -ds_drow * norm, -ds_dcol * norm  # d/dy = -d/drow (rows run south)
        if raster is not self.domain:
            r, c = _subgrid_coords(self.domain, raster)
            d_east = ndimage.map_coordinates(d_east, [r, c], order=1, mode="wrap")
            d_north = ndimage.map_coordinates(d_north, [r, c], order=1, mode="wrap")
        rows, cols = np.meshgrid(np.arange(raster.nrows), np.arange(raster.ncols), indexing="ij")
        return [rows + d_north / raster.step, cols - d_east / raster.step]  # g(p - d)

    def physical(self, raster: GeosGrid, when: dt.datetime) -> dict[str, np.ndarray]:
        """Geophysical state on ``raster``: tau, cloud-top T, surface T/albedo, cos(SZA), lon/lat.

        The last few states are cached: every channel of every sensor at one time shares them."""
        key = (raster, when)
        if key not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._physical(raster, when)
        return self._cache[key]

    def _physical(self, raster: GeosGrid, when: dt.datetime) -> dict[str, np.ndarray]:
        lat_lon = raster.lonlat()
        lon, lat = lat_lon
        g = self.latent(raster, when)
        s = self.spec
        tau = s.tau0 * np.sqrt(np.maximum(g["cloud"] - s.cloud_threshold, 0.0))
        if s.texture_sigma > 0:  # log-normal in-cloud texture of mean 1 (the mean tau is kept)
            tau = tau * np.exp(s.texture_sigma * g["texture"] - s.texture_sigma ** 2 / 2)
        # deep clouds reach high: cloud-top height [km] from both latent fields
        z = 1.0 + 11.0 / (1.0 + np.exp(-(1.2 * g["top"] + 0.9 * (g["cloud"] - s.cloud_threshold) - 0.6)))
        t_surf = 301.0 - 38.0 * np.sin(np.radians(np.nan_to_num(lat))) ** 2
        mu0 = cos_solar_zenith(lon, lat, when)
        t_surf = t_surf + g["land"] * 8.0 * np.maximum(mu0, 0.0) - g["land"] * 3.0  # land heats by day
        ctt = np.maximum(t_surf - 6.5 * z, 203.0 + 4.0 * np.tanh(g["top"]))
        return {"tau": tau.astype(np.float32), "ctt": ctt.astype(np.float32),
                "t_surf": t_surf.astype(np.float32),
                "land": g["land"], "mu0": mu0.astype(np.float32), "lat": lat, "valid": np.isfinite(lon)}


def cos_solar_zenith(lon: np.ndarray, lat: np.ndarray, when: dt.datetime) -> np.ndarray:
    """cos(SZA) from the standard declination / equation-of-time approximation (NaN-safe)."""
    doy = when.timetuple().tm_yday
    hours = when.hour + when.minute / 60 + when.second / 3600
    gamma = 2 * np.pi / 365 * (doy - 1 + (hours - 12) / 24)
    decl = (0.006918 - 0.399912 * np.cos(gamma) + 0.070257 * np.sin(gamma) - 0.006758 * np.cos(2 * gamma)
            + 0.000907 * np.sin(2 * gamma) - 0.002697 * np.cos(3 * gamma) + 0.00148 * np.sin(3 * gamma))
    eqtime = 229.18 * (0.000075 + 0.001868 * np.cos(gamma) - 0.032077 * np.sin(gamma)
                       - 0.014615 * np.cos(2 * gamma) - 0.040849 * np.sin(2 * gamma))
    solar_time = hours * 60 + eqtime + 4 * np.nan_to_num(lon)
    ha = np.radians(solar_time / 4 - 180)
    la = np.radians(np.nan_to_num(lat))
    return np.sin(la) * np.sin(decl) + np.cos(la) * np.cos(decl) * np.cos(ha)


# --------------------------------------------------------------------------- radiative model
def channel_value(kind: str, state: dict[str, np.ndarray]) -> np.ndarray:
    """Top-of-atmosphere value of a generic spectral channel ``kind`` from the geophysical state.

    Kinds are the spectral families shared across sensors (SEVIRI VIS006 ~ VIIRS I01 ~ FCI vis_06):
    vis06, vis08, nir16 (reflectance %), ir39, wv62, wv73, ir87, ir97, ir108, ir120, ir134 (K).
    """
    tau, ctt, ts, land, mu0 = (state[k] for k in ("tau", "ctt", "t_surf", "land", "mu0"))
    ice = 1.0 / (1.0 + np.exp((ctt - 243.0) / 4.0))
    r_cloud = tau / (tau + 7.0)  # two-stream-like albedo of a conservative-scattering cloud
    sun = np.clip(mu0, 0.0, None)
    eps = 1.0 - np.exp(-tau / 2.0)  # IR emissivity: thin cirrus are semi-transparent
    bt = eps * ctt + (1 - eps) * ts

    def reflectance(surface, cloud_factor=1.0):
        rc = r_cloud * cloud_factor
        return 100.0 * sun * (rc + (1 - rc) ** 2 * surface)

    if kind == "vis06":
        return reflectance(0.05 + 0.10 * land)
    if kind == "vis08":
        return reflectance(0.03 + 0.27 * land)
    if kind == "nir16":
        return reflectance(0.02 + 0.22 * land, 1.0 - 0.45 * ice)
    if kind == "ir39":  # reflected sunlight adds to emission over water clouds by day
        return bt + 2.0 + 18.0 * sun * r_cloud * (1 - ice)
    if kind == "ir108":
        return bt
    if kind == "ir120":
        return bt - 1.0 - 1.2 * (1 - eps) * (ts - 270.0) / 30.0
    if kind == "ir87":
        return bt - 1.5 + 1.0 * ice * eps
    if kind == "ir97":  # ozone absorption: a cooler, smoother version
        return 0.75 * bt + 45.0
    if kind == "ir134":  # CO2: weighting function in the mid troposphere
        return np.minimum(bt, 0.65 * ts + 70.0 + 0.2 * (bt - ts))
    if kind == "wv62":
        return np.minimum(bt, 236.0 + 0.08 * (ts - 290.0) - 4.0 * state.get("wv", 0.0))
    if kind == "wv73":
        return np.minimum(bt, 252.0 + 0.15 * (ts - 290.0))
    raise KeyError(f"unknown spectral kind '{kind}'")


SPECTRAL_KIND = {
    # SEVIRI
    "VIS006": "vis06", "VIS008": "vis08", "IR_016": "nir16", "IR_039": "ir39", "WV_062": "wv62",
    "WV_073": "wv73", "IR_087": "ir87", "IR_097": "ir97", "IR_108": "ir108", "IR_120": "ir120",
    "IR_134": "ir134",
    # VIIRS I-bands
    "I01": "vis06", "I02": "vis08", "I03": "nir16", "I04": "ir39", "I05": "ir108",
    # FCI
    "vis_06": "vis06", "vis_08": "vis08", "nir_16": "nir16", "ir_38": "ir39", "wv_63": "wv62",
    "wv_73": "wv73", "ir_87": "ir87", "ir_97": "ir97", "ir_105": "ir108", "ir_123": "ir120",
    "ir_133": "ir134",
}


def psf_sigma_px(pixel_m: float, fwhm_px: float, raster_step: float) -> float:
    """Gaussian sigma (in raster pixels) of a sensor footprint: PSF (FWHM) convolved with the pixel box."""
    sigma_m = np.hypot(fwhm_px * pixel_m / 2.3548, pixel_m / np.sqrt(12.0))
    return float(sigma_m / raster_step)


def sample(raster_values: np.ndarray, raster: GeosGrid, x: np.ndarray, y: np.ndarray,
           sigma_px: float) -> np.ndarray:
    """Observe a raster through a Gaussian footprint at projection points (x, y) [m]; NaN outside."""
    blurred = (ndimage.gaussian_filter(np.nan_to_num(raster_values), sigma_px, mode="nearest")
               if sigma_px > 0.3 else np.nan_to_num(raster_values))
    rows = (raster.y[0] - y) / raster.step
    cols = (x - raster.x[0]) / raster.step
    ok = np.isfinite(rows) & np.isfinite(cols)
    out = ndimage.map_coordinates(blurred, [np.where(ok, rows, 0), np.where(ok, cols, 0)], order=1,
                                  mode="nearest").astype(np.float32)
    inside = (ok & (rows >= -0.5) & (rows <= raster.nrows - 0.5)
              & (cols >= -0.5) & (cols <= raster.ncols - 0.5))
    return np.where(inside, out, np.nan)


def grid_points(grid: GeosGrid) -> tuple[np.ndarray, np.ndarray]:
    xx, yy = np.meshgrid(grid.x, grid.y)
    return xx, yy


def valid_mask(grid: GeosGrid) -> np.ndarray:
    lon, _ = geos_to_lonlat(*grid_points(grid), grid)
    return np.isfinite(lon)
