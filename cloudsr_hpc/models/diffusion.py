"""Residual-shifting diffusion (ResShift / SinSR family) in pixel space.

Forward process, from the HR image x0 towards the upsampled LR y:

    q(x_t | x0, y) = N(x0 + eta_t (y - x0), kappa^2 eta_t I),    t = 1..T

with sqrt(eta_t) on a geometric schedule from sqrt(eta_1) to sqrt(eta_T) (power ``p`` warps the
spacing).  The posterior used by the sampler is

    q(x_{t-1} | x_t, x0) = N(eta_{t-1}/eta_t x_t + alpha_t/eta_t x0,  kappa^2 eta_{t-1}/eta_t alpha_t I),
    alpha_t = eta_t - eta_{t-1}  (eta_0 = 0).

The network predicts x0; sampling starts at x_T = y + kappa sqrt(eta_T) eps, so a few steps suffice.
Samplers (:data:`SAMPLERS`, chosen by ``diffusion.sampler``, overridable at inference/evaluation):

  * ``ancestral``: x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), t = T..1 (T network calls, fresh noise each step);
  * ``ddim``: the deterministic ResShift sampler: eps_hat = (x_t - x0_hat - eta_t (y - x0_hat)) /
    (kappa sqrt(eta_t)), x_{t-1} = x0_hat + eta_{t-1} (y - x0_hat) + kappa sqrt(eta_{t-1}) eps_hat
    (T network calls; only the prior x_T is random);
  * ``one_step``: x0_hat of x_T at t = T (one network call).

Each declares how many network calls it makes for T steps (:meth:`ResShift.network_calls`): the
tile halo needs one network receptive margin per call.
All noise comes from :class:`GlobalNoise`, keyed by global pixel position, so overlapping tiles
of one scene draw identical noise where they overlap.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, y, t) -> x0


def eta_schedule(steps: int, eta_min: float, eta_max: float, power: float) -> torch.Tensor:
    """eta_1..eta_T (float64): sqrt(eta) geometric between sqrt(eta_min) and sqrt(eta_max)."""
    if steps == 1:
        return torch.tensor([eta_max], dtype=torch.float64)
    lo, hi = math.sqrt(eta_min), math.sqrt(eta_max)
    frac = torch.linspace(0, 1, steps, dtype=torch.float64) ** power
    return (lo * (hi / lo) ** frac) ** 2


NoiseSource = Callable[[int], torch.Tensor]  # k -> the k-th noise field, shaped like y


@dataclass(frozen=True)
class Sampler:
    """One way from x_T to x_0: ``run(diffusion, denoise, y, noise, progress)`` and the number of
    network calls it makes for T steps (the tile halo needs one network margin per call)."""
    run: Callable[..., torch.Tensor]
    calls: Callable[[int], int]


@dataclass
class ResShift:
    """The schedule and sampler of one diffusion stage.  No defaults here: build it with
    :meth:`from_config` (``DiffusionConfig`` is the one source of the defaults)."""
    steps: int
    kappa: float
    eta_min: float
    eta_max: float
    power: float
    sampler: str

    @classmethod
    def from_config(cls, cfg, sampler: str = "") -> ResShift:
        """From a :class:`cloudsr_hpc.schema.DiffusionConfig`; ``sampler`` (a :data:`SAMPLERS` name)
        overrides ``cfg.sampler``."""
        return cls(cfg.steps, cfg.kappa, cfg.eta_min, cfg.eta_max, cfg.power, sampler or cfg.sampler)

    def __post_init__(self):
        sampler_spec(self.sampler)
        self.eta = eta_schedule(self.steps, self.eta_min, self.eta_max, self.power)
        self.eta_prev = torch.cat([torch.zeros(1, dtype=torch.float64), self.eta[:-1]])

    def with_sampler(self, name: str, key: str = "sampler") -> ResShift:
        """The same schedule sampled by ``name`` (refused, naming ``key``, when unknown)."""
        sampler_spec(name, key)
        return replace(self, sampler=name)

    @property
    def network_calls(self) -> int:
        """Network evaluations per sample: T for ancestral and ddim, 1 for one_step."""
        return SAMPLERS[self.sampler].calls(self.steps)

    def _at(self, v: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Schedule value for 1-based step indices ``t`` (N,), broadcast to ``like``."""
        return v.to(like.device)[t - 1].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x0, y)."""
        eta = self._at(self.eta, t, x0)
        return x0 + eta * (y - x0) + self.kappa * eta.sqrt() * noise

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor,
                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0)."""
        eta, prev = self._at(self.eta, t, x_t), self._at(self.eta_prev, t, x_t)
        alpha = eta - prev
        mean = prev / eta * x_t + alpha / eta * x0
        var = self.kappa ** 2 * prev / eta * alpha
        return mean, var

    def prior_sample(self, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_T = y + kappa sqrt(eta_T) eps."""
        return y + self.kappa * math.sqrt(float(self.eta[-1])) * noise

    @torch.no_grad()
    def sample(self, denoise: Denoiser, y: torch.Tensor, noise: NoiseSource,
               progress: bool = False) -> torch.Tensor:
        """x_T -> x_0 with an x0-predicting ``denoise(x_t, y, t)``, by this stage's sampler.

        ``noise(k)`` returns the k-th noise field (k = T for the prior, then T-1..1) shaped like y;
        pass :meth:`GlobalNoise.field` bound to the tile position for tile-consistent sampling.
        Every sampler starts from the same prior x_T = y + kappa sqrt(eta_T) noise(T)."""
        return SAMPLERS[self.sampler].run(self, denoise, y, noise, progress)


def _steps(d: ResShift, progress: bool):
    from tqdm import trange
    return trange(d.steps, 0, -1, disable=not progress, desc="sampling")


def _run(d: ResShift, denoise: Denoiser, y: torch.Tensor, noise: NoiseSource, progress: bool,
         step) -> torch.Tensor:
    """From x_T = y + kappa sqrt(eta_T) eps down to t = 1: predict x0_hat, then (t > 1)
    ``step(x_t, x0_hat, t) -> x_{t-1}``; returns the last x0_hat."""
    x = d.prior_sample(y, noise(d.steps))
    x0 = x
    for t in _steps(d, progress):
        tt = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        x0 = denoise(x, y, tt)
        if t > 1:
            x = step(x, x0, tt)
    return x0


def _ancestral(d: ResShift, denoise: Denoiser, y: torch.Tensor, noise: NoiseSource,
               progress: bool) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) from t = T to 1.  With T = 1 this is exactly one
    x0-prediction from x_1 = y + kappa sqrt(eta_1) eps."""
    def step(x, x0, tt):
        mean, var = d.posterior(x, x0, tt)
        return mean + var.sqrt() * noise(int(tt[0]) - 1)
    return _run(d, denoise, y, noise, progress, step)


def _ddim(d: ResShift, denoise: Denoiser, y: torch.Tensor, noise: NoiseSource,
          progress: bool) -> torch.Tensor:
    """Deterministic after the prior: the noise implied by x_t and x0_hat is carried to t - 1."""
    def step(x, x0, tt):
        eta, prev = d._at(d.eta, tt, x), d._at(d.eta_prev, tt, x)
        eps = (x - x0 - eta * (y - x0)) / (d.kappa * eta.sqrt())
        return x0 + prev * (y - x0) + d.kappa * prev.sqrt() * eps
    return _run(d, denoise, y, noise, progress, step)


def _one_step(d: ResShift, denoise: Denoiser, y: torch.Tensor, noise: NoiseSource,
              progress: bool) -> torch.Tensor:
    """x0_hat of the prior x_T at t = T: one network call."""
    x = d.prior_sample(y, noise(d.steps))
    return denoise(x, y, torch.full((y.shape[0],), d.steps, dtype=torch.long, device=y.device))


# the samplers by ``diffusion.sampler`` / ``infer.sampler`` / ``evaluate.sampler`` name
SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(_ancestral, lambda steps: steps),
    "ddim": Sampler(_ddim, lambda steps: steps),
    "one_step": Sampler(_one_step, lambda steps: 1),
}


def sampler_spec(name: str, key: str = "diffusion.sampler") -> Sampler:
    """The registered sampler ``name``; an unknown one is a :class:`ConfigError` naming ``key``."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{key}: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})") from None


# --------------------------------------------------------------------------- position-keyed noise
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


_MASK64 = (1 << 64) - 1


def _to_signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


_K_CH, _K_ROW, _K_COL = (_to_signed(k) for k in (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB))
_K_MEMBER = 0x8EBC6AF09C88C6E3


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 (two's-complement wrap-around makes it exact)."""
    z = z ^ ((z >> 30) & 0x3FFFFFFFF)
    z = z * _to_signed(_M1)
    z = z ^ ((z >> 27) & 0x1FFFFFFFFF)
    z = z * _to_signed(_M2)
    return z ^ ((z >> 31) & 0x1FFFFFFFF)


class GlobalNoise:
    """Standard normal noise that is a pure function of (seed, member, step, channel, global row, column).

    Two tiles covering the same global pixel get the same value there, whatever their size,
    offset, batch or rank: the overlap of two tiles blends one sample, not two.  ``member`` selects
    an independent stream for each ensemble member; member 0 is the single-sample stream."""

    def __init__(self, seed: int, member: int = 0):
        if member < 0:
            raise ValueError(f"member must be >= 0, got {member}")
        self.seed, self.member = int(seed), int(member)

    def _uniform(self, key: torch.Tensor) -> torch.Tensor:
        bits = _mix(key) >> 11 & ((1 << 53) - 1)  # 53 random bits -> (0, 1)
        return (bits.to(torch.float64) + 0.5) / float(1 << 53)

    def field(self, step: int, channels: int, row0: int, col0: int, h: int, w: int,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(channels, h, w) noise for the window starting at global (row0, col0)."""
        r = torch.arange(row0, row0 + h, dtype=torch.int64, device=device).view(1, h, 1)
        c = torch.arange(col0, col0 + w, dtype=torch.int64, device=device).view(1, 1, w)
        ch = torch.arange(channels, dtype=torch.int64, device=device).view(channels, 1, 1)
        # chain the coordinates through the avalanche mix, each with its own odd multiplier
        base = _to_signed(((self.seed * 0x9E3779B97F4A7C15) ^ (step * 0xC2B2AE3D27D4EB4F)
                           ^ (self.member * _K_MEMBER)) & _MASK64)
        key = _mix(ch * _K_CH + base)
        key = _mix(key + r * _K_ROW)
        key = _mix(key + c * _K_COL)
        u1 = self._uniform(key)
        u2 = self._uniform(_mix(key ^ 0x5851F42D4C957F2D))
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)

    def batch(self, step: int, channels: int, origins: list[tuple[int, int]], h: int, w: int,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, channels, h, w) for tiles at global ``origins`` [(row0, col0), ...]."""
        return torch.stack([self.field(step, channels, r, c, h, w, device, dtype) for r, c in origins])
