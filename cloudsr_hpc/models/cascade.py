"""Exported stages and their cascade: LR -> Stage 1 (cross-sensor) -> Stage 2 (structure) -> HR.

Each stage is an exported checkpoint (:mod:`cloudsr_hpc.models.export`), its network built from the
stored ``model.kind`` (:mod:`cloudsr_hpc.models.backbones`).  A diffusion stage samples with
:class:`ResShift` from its condition, by its stored ``diffusion.sampler`` or the one given at load
time; the regression baseline is one forward pass.
Noise comes from :class:`GlobalNoise` keyed by global HR pixel position, with a distinct seed per
stage, so tiles and ranks reproduce the same sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import build
from ..errors import ConfigError, InputError
from ..schema import DiffusionConfig, ModelConfig
from .backbones import build_model
from .diffusion import GlobalNoise, ResShift, sampler_spec
from .export import load_model


def upsample_condition(lr: torch.Tensor, lr_mask: torch.Tensor,
                       scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LR (N, C, h, w) + per-channel validity -> (bicubic y on the HR grid, nearest-upsampled pixel
    validity (N, 1, H, W)).  A pixel is valid where any channel is: a reflectance channel without
    signal (night) must not take the brightness temperatures of the same pixel down with it."""
    y = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    m = F.interpolate(lr_mask.amax(dim=1, keepdim=True), scale_factor=scale, mode="nearest")
    return y * m, m


def channel_fill(pred: torch.Tensor, lr_mask: torch.Tensor, scale: int) -> torch.Tensor:
    """NaN (fill) in each output channel where that channel had no valid input: a model never
    invents a value the sensor did not measure (no daylight painted at night)."""
    m = F.interpolate(lr_mask, scale_factor=scale, mode="nearest")
    return pred.masked_fill(m < 0.5, float("nan"))


def predict_x0(model: torch.nn.Module, diffusion: ResShift | None, y: torch.Tensor, m: torch.Tensor,
               noise: GlobalNoise, origins: list[tuple[int, int]]) -> torch.Tensor:
    """One stage's output for condition y: a ResShift sample, or one pass (``diffusion=None``)."""
    n, c, h, w = y.shape
    if diffusion is None:
        return model(y, y, torch.zeros(n, dtype=torch.long, device=y.device), m)
    return diffusion.sample(lambda x, yy, t: model(x, yy, t, m), y,
                            lambda k: noise.batch(k, c, origins, h, w, y.device, y.dtype))


# what inference reads from an export's metadata (an export with ``meta: {}`` is refused here, by name)
META_KEYS = ("stage", "channels", "scale", "lr_channels", "hr_channels", "norm_hr", "config")


def _check_meta(path: str | Path, meta) -> None:
    if not isinstance(meta, dict):
        raise InputError(f"{path}: export metadata is a {type(meta).__name__}, expected a mapping")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise InputError(f"{path}: export metadata lacks {', '.join(missing)} (not a complete "
                         "cloudsr-hpc export)")


def _stage_name(stage) -> str:
    return "the regression baseline" if stage == "regression" else f"Stage {stage}"


@dataclass
class Stage:
    model: torch.nn.Module
    diffusion: ResShift | None
    meta: dict

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", expect: int | str | None = None,
             key: str = "", sampler: str = "", sampler_key: str = "sampler") -> Stage:
        """An exported stage; ``expect`` (1, 2 or "regression") refuses an export of another stage
        (a Stage 2 given as Stage 1 samples from the wrong condition without any other sign).
        ``sampler`` ("" = the stored ``diffusion.sampler``) overrides how a diffusion stage samples
        (an unknown name is refused naming ``sampler_key``); the regression baseline ignores it."""
        if sampler:
            sampler_spec(sampler, sampler_key)  # before reading the weights
        state, meta = load_model(path)
        _check_meta(path, meta)
        if expect is not None and meta["stage"] != expect:
            raise InputError(f"{path}: export of {_stage_name(meta['stage'])}, given as {key or 'a stage'} "
                             f"(which takes {_stage_name(expect)})")
        cfg = meta.get("config", {})
        try:
            mcfg = build(ModelConfig, cfg.get("model", {}), f"{path}: model")
            dcfg = build(DiffusionConfig, cfg.get("diffusion", {}), f"{path}: diffusion")
        except Exception as e:  # noqa: BLE001 - any malformed meta is a foreign checkpoint
            raise InputError(f"{path}: checkpoint config unreadable ({e})") from None
        try:  # a kind or sampler this version does not know: an export from elsewhere
            model = build_model(int(meta["channels"]), mcfg)
            diffusion = None if meta.get("stage") == "regression" else ResShift.from_config(dcfg)
        except ConfigError as e:
            raise InputError(f"{path}: stored {e}") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(f"{path}: weights do not match the config stored with them "
                             f"({str(e).splitlines()[0]})") from None
        if diffusion is not None and sampler:
            diffusion = diffusion.with_sampler(sampler, sampler_key)
        return cls(model.to(device).eval(), diffusion, meta)


class Cascade:
    """Stages applied in order; the first takes bicubic(LR), each next one the previous output."""

    def __init__(self, stages: list[Stage], seed: int = 0):
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        chans = {tuple(s.meta["hr_channels"]) for s in stages}
        if len(chans) != 1:
            raise InputError(f"stages disagree on channels: {sorted(chans)}")
        self.stages, self.seed = stages, seed
        self.scale = int(stages[0].meta["scale"])
        # per-channel inflation of ensemble members about their mean (models.calibration.attach)
        self.spread_inflation = None

    @property
    def lr_channels(self) -> list[str]:
        return list(self.stages[0].meta["lr_channels"])

    @property
    def hr_channels(self) -> list[str]:
        return list(self.stages[0].meta["hr_channels"])

    def input_norm(self) -> tuple[list[float], list[float]]:
        """(lo, hi) mapping the LR input to [-1, 1]: Stage 1 and the regression baseline were
        trained on LR-sensor values, a lone Stage 2 on degraded HR-sensor values."""
        first = self.stages[0].meta
        return first["norm_hr"] if first.get("stage") == 2 else first.get("norm_lr", first["norm_hr"])

    def output_norm(self) -> tuple[list[float], list[float]]:
        return self.stages[-1].meta["norm_hr"]

    def receptive_margin_hr(self) -> int:
        """HR pixels an input change can travel: bicubic (2 LR px) plus, per stage, one network
        margin per network call of its sampler (each call feeds the previous prediction back in):
        T for ancestral and ddim, 1 for one_step and the regression baseline."""
        calls = [1 if st.diffusion is None else st.diffusion.network_calls for st in self.stages]
        return 2 * self.scale + sum(n * st.model.receptive_margin()
                                    for n, st in zip(calls, self.stages, strict=True))

    @property
    def stochastic(self) -> bool:
        """Whether members differ: some stage samples (the regression baseline is one pass)."""
        return any(st.diffusion is not None for st in self.stages)

    def describe(self) -> str:
        """Provenance of the stages: "stage 1 (T=4, ancestral) -> stage 2 (T=4, ddim)"."""
        return " -> ".join(f"stage {st.meta.get('stage')}"
                           + ("" if st.diffusion is None
                              else f" (T={st.diffusion.steps}, {st.diffusion.sampler})")
                           for st in self.stages)

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, lr_mask: torch.Tensor, origins: list[tuple[int, int]],
                 member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised LR (N, C, h, w) + per-channel mask -> (normalised HR, NaN in the channels and
        pixels without input, HR pixel validity (N, 1, H, W)); ``origins`` are the global HR (row, col)
        of each tile's top-left pixel; ``member`` picks the ensemble member's noise (0: the single sample)."""
        y, m = upsample_condition(lr, lr_mask, self.scale)
        for i, stage in enumerate(self.stages):
            y = predict_x0(stage.model, stage.diffusion, y, m, GlobalNoise(self.seed * 16 + i, member),
                           origins)
        return channel_fill(y, lr_mask, self.scale), m
