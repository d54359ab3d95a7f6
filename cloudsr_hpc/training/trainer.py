"""The training loop for Stage 1, Stage 2 and the regression baseline, on a DeepSpeed engine.

One step: draw the micro-batches of this rank for global step ``s`` (a pure function of seed,
step and rank -- so a resumed run sees exactly the batches an uninterrupted one would), upsample
the LR to the HR grid (the condition y), draw t and eps from a generator seeded by (seed, step,
rank), form x_t, predict x0, masked loss, ``engine.backward``/``engine.step`` (ZeRO, clipping,
accumulation and the LR schedule live in DeepSpeed), update the EMA.  SIGTERM / SIGUSR1 set a
flag; the loop saves a checkpoint at the next step boundary and exits with :data:`EXIT_REQUEUE`.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import dump_yaml, to_dict
from ..core.seeds import seed_from
from ..data.datasets import DegradedHRDataset, PairDataset, collate_samples
from ..data.degradations import blur
from ..data.sensors import load_registry
from ..errors import CloudSRError, ConfigError, InputError
from ..models.backbones import backbone_class, build_model
from ..models.cascade import predict_x0, upsample_condition
from ..models.diffusion import GlobalNoise, ResShift, sampler_spec
from ..models.export import export_model, load_model
from ..models.fidelity import gradient_ratio, psnr
from ..schema import StageConfig
from .checkpoint import (
    MANIFEST,
    guard_engine_loads,
    pick_checkpoint,
    rotate_checkpoints,
    write_manifest,
    write_pointer,
)
from .distributed import DistInfo
from .input import TrainInput, step_sampler
from .losses import total_loss

log = logging.getLogger(__name__)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: state saved, run again to resume



def cascade_conditions(x0: torch.Tensor, y: torch.Tensor, m: torch.Tensor, p: float, scale: int,
                       gen: torch.Generator) -> torch.Tensor:
    """Replace a share ``p`` of Stage 2's conditions by what Stage 1 hands it in the cascade: the
    HR with its scales near and beyond the LR Nyquist limit damped, here a Gaussian blur of
    sigma ~ U(0.25, scale / 2) HR pixels (bicubic(LR) lacks them all, Stage 1's output only the finest)."""
    u = torch.rand(2, x0.shape[0], generator=gen).tolist()
    out = y.clone()
    for i, (pick, v) in enumerate(zip(*u, strict=True)):
        if pick < p:
            out[i] = blur(x0[i:i + 1], 0.25 + v * (scale / 2 - 0.25))[0] * m[i]
    return out

class TrainingError(CloudSRError):
    pass


def make_dataset(cfg: StageConfig, split: str):
    """Stage 2 learns from HR patches and their synthetic degradation; so do Stage 1 and the
    regression baseline of a single-sensor (self-supervised) pair, which has no real LR/HR pairs."""
    d = Path(cfg.data.shards) / split
    augment = cfg.data.augment if split == "train" else "none"  # validation scores the patches as stored
    if cfg.stage == 2 or load_registry().pair(cfg.data.pair).self_supervised:
        return DegradedHRDataset(d, cfg.data.degradation, augment=augment)
    if cfg.data.augment != "none":
        raise ConfigError(f"data.augment: {cfg.data.augment} needs HR-only training (Stage 2 or a "
                          f"self-supervised pair); the real LR/HR pairs of {cfg.data.pair} carry a "
                          f"directional misregistration that Stage {cfg.stage} must learn")
    return PairDataset(d)


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # warm-up: early on the average follows the weights (a short run must not export its init)
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(decay).add_(v.detach().float(), alpha=1 - decay)
            else:
                self.shadow[k].copy_(v)


class Trainer:
    def __init__(self, cfg: StageConfig, dist: DistInfo, config_text: str = ""):
        self.cfg, self.dist = cfg, dist
        self.config_text = config_text or dump_yaml(cfg)
        backbone_class(cfg.model.kind), sampler_spec(cfg.diffusion.sampler)  # registry names, before any work
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.train_set = make_dataset(cfg, "train")
        self.val_set = self._optional_val()
        self.scale = self.train_set.scale
        self.channels = len(self.train_set.attrs["hr_channels"])
        self.model = build_model(self.channels, cfg.model)
        if cfg.init_from:
            self._init_from(cfg.init_from)
        if cfg.train.activation_checkpointing:  # recompute block activations in backward: same loss, grads
            if not hasattr(self.model, "activation_checkpointing"):
                raise TrainingError(f"train.activation_checkpointing: backbone {cfg.model.kind!r} does not "
                                    "support it")
            self.model.activation_checkpointing = True
        if cfg.train.compile:  # in place: parameter and state_dict names stay the module's own
            self.model.compile()
        self.diffusion = ResShift.from_config(cfg.diffusion)
        self.out = Path(cfg.train.out_dir)
        self.ckpt_dir = self.out / "ckpt"
        self.engine = self._engine()
        self.ema = EMA(self.engine.module, cfg.train.ema_decay)
        self.step = 0
        self._stop = False
        self.tb = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ set-up
    def _optional_val(self):
        try:
            return make_dataset(self.cfg, "val")
        except InputError:
            return None

    def _init_from(self, path: str) -> None:
        state, meta = load_model(path)
        if meta.get("channels") != self.channels:
            raise InputError(f"{path}: checkpoint has {meta.get('channels')} channels, config/shards have "
                             f"{self.channels}")
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(f"{path}: weights do not fit this model config "
                             f"({str(e).splitlines()[0]})") from None
        log.info("initialised from %s (stage %s)", path, meta.get("stage"))

    def _precision(self) -> str:
        p = self.cfg.train.precision
        return ("bf16" if self.dist.device.type == "cuda" else "fp32") if p == "auto" else p

    def _ds_config(self) -> dict:
        """The DeepSpeed config.  The optimizer is torch's AdamW ("torch_adam": DeepSpeed passes the
        remaining params on as its keyword arguments); ``train.fused_adamw`` adds ``fused=True`` on a
        GPU only, so the CPU optimizer (and its results) is exactly the default AdamW."""
        t = self.cfg.train
        opt = {"lr": t.lr, "weight_decay": 0.0, "torch_adam": True}
        if t.fused_adamw and self.dist.device.type == "cuda":
            opt["fused"] = True
        return {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum,
            "gradient_clipping": t.grad_clip,
            "steps_per_print": 10 ** 9,
            "optimizer": {"type": "AdamW", "params": opt},
            "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": t.steps,
                                                               "warmup_num_steps": max(1, t.steps // 20)}},
            "zero_optimization": {"stage": t.zero_stage},
            "bf16": {"enabled": self._precision() == "bf16"},
        }

    def _engine(self):
        import deepspeed
        engine, _, _, _ = deepspeed.initialize(model=self.model, model_parameters=self.model.parameters(),
                                               config=self._ds_config())
        return engine

    # ------------------------------------------------------------------ data order
    def batch_indices(self, step: int, micro: int) -> list[int]:
        """Dataset indices of micro-batch ``micro`` of global ``step`` on this rank (what the input
        loader draws: :class:`~cloudsr_hpc.data.datasets.StepBatchSampler`; a fresh one here, so
        this builds the epoch's permutation -- the loop itself never calls it)."""
        return step_sampler(self.train_set, self.cfg.train, self.dist.rank, self.dist.world).indices(
            step, micro)

    def _collate(self, dataset, indices: list[int], epoch: int = 0) -> dict[str, torch.Tensor]:
        """In-process read + collation (validation): the samples of ``indices`` degraded for ``epoch``."""
        items = [dataset[(i, epoch)] for i in indices]
        return {k: v.to(self.dist.device) for k, v in collate_samples(items).items()}

    def _input(self) -> TrainInput:
        """The training input loader (``train.num_workers`` workers), opened at the current step."""
        if getattr(self, "_train_input", None) is None:
            self._train_input = TrainInput(self.train_set, self.cfg.train, self.dist.rank, self.dist.world,
                                           self.dist.device, start=self.step)
        return self._train_input

    def close_input(self) -> None:
        """Stop the input loader's worker processes (a later step opens a new loader)."""
        inp, self._train_input = getattr(self, "_train_input", None), None
        if inp is not None:
            inp.close()

    # ------------------------------------------------------------------ one step
    def forward_loss(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        y, m = upsample_condition(batch["lr"], batch["lr_mask"], self.scale)
        mask = m * batch["hr_mask"]  # per channel: a reflectance channel at night teaches nothing
        x0 = batch["hr"]
        n = x0.shape[0]
        dtype = next(self.engine.module.parameters()).dtype
        p = self.cfg.data.degradation.cascade_condition_prob if self.cfg.stage == 2 else 0.0
        if p > 0:  # some conditions like Stage 1's outputs in the cascade: HR lacking only the finest scales
            y = cascade_conditions(x0, y, m, p, self.scale, gen)
        if self.cfg.stage == "regression":
            t = torch.zeros(n, dtype=torch.long, device=x0.device)
            pred = self.engine(y.to(dtype), y.to(dtype), t, m.to(dtype))
        else:
            t = torch.randint(1, self.diffusion.steps + 1, (n,), generator=gen).to(x0.device)
            eps = torch.randn(x0.shape, generator=gen).to(x0.device)
            xt = self.diffusion.q_sample(x0, y, t, eps)
            pred = self.engine(xt.to(dtype), y.to(dtype), t, m.to(dtype))
        w = self.cfg.loss
        return total_loss(pred.float(), x0, mask, w.grad_weight, w.spectral_weight)

    def train_step(self) -> dict[str, float]:
        t = self.cfg.train
        parts = {}
        for micro in range(t.grad_accum):
            gen = torch.Generator().manual_seed(seed_from(t.seed, self.step, micro, self.dist.rank))
            # the batch_indices(step, micro) samples, Stage 2's degradations drawn for epoch = step
            batch = self._input().next(self.step, micro)
            parts = self.forward_loss(batch, gen)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise TrainingError(f"{self.cfg.train.out_dir}: non-finite loss ({float(loss)}) at step "
                                    f"{self.step}; no checkpoint written (lower train.lr or check the "
                                    "shards)")
            self.engine.backward(loss)
            self.engine.step()
        self.ema.update(self.engine.module, self.step)
        self.step += 1
        return {k: float(v.detach()) for k, v in parts.items()}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, max_batches: int = 4) -> dict[str, float]:
        """PSNR (normalised units, range 2) and gradient-preservation ratio of the EMA model and of
        bicubic on held-out pairs."""
        data = self.val_set or self.train_set
        model = build_model(self.channels, self.cfg.model).to(self.dist.device)
        model.load_state_dict(self.ema.shadow)
        model.eval()
        noise = GlobalNoise(self.cfg.train.seed)
        scores = {"psnr_model": [], "psnr_bicubic": [], "grad_ratio_model": [], "grad_ratio_bicubic": []}
        bs = self.cfg.train.batch_size
        for b in range(min(max_batches, math.ceil(len(data) / bs))):
            idx = list(range(b * bs, min(len(data), (b + 1) * bs)))
            batch = self._collate(data, idx)
            y, m = upsample_condition(batch["lr"], batch["lr_mask"], self.scale)
            mask = m * batch["hr_mask"]
            pred = self.predict(model, y, m, noise, [(i * 10_000, 0) for i in idx])
            scores["psnr_model"].append(psnr(pred, batch["hr"], mask))
            scores["psnr_bicubic"].append(psnr(y, batch["hr"], mask))
            scores["grad_ratio_model"].append(gradient_ratio(pred, batch["hr"], mask))
            scores["grad_ratio_bicubic"].append(gradient_ratio(y, batch["hr"], mask))
        return {k: float(np.mean(v)) for k, v in scores.items()}

    def predict(self, model, y, m, noise, origins):
        return predict_x0(model, None if self.cfg.stage == "regression" else self.diffusion, y, m, noise,
                          origins)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Every rank saves; then rank 0 records the digests (the save is finished only now),
        moves the pointer and rotates out checkpoints beyond ``train.keep_checkpoints``."""
        tag = f"step{self.step:08d}"
        # saving again into a directory (resumed from before it): unfinished until re-recorded
        if self.dist.is_main:
            (self.ckpt_dir / tag / MANIFEST).unlink(missing_ok=True)
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False,
                                    client_state={"step": self.step, "ema": self.ema.shadow})
        torch.distributed.barrier()
        if self.dist.is_main:
            write_manifest(self.ckpt_dir / tag)
            write_pointer(self.ckpt_dir, tag)
            rotate_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints, tag)
        torch.distributed.barrier()
        log.info("checkpoint %s", self.ckpt_dir / tag)

    def _verified_checkpoint(self) -> tuple[str, dict] | None:
        """Rank 0 picks the newest checkpoint that verifies; every rank gets it (or the error)."""
        pick = None
        if self.dist.is_main:
            try:
                pick = ("ok", pick_checkpoint(self.ckpt_dir))
            except CloudSRError as e:
                pick = ("error", str(e))
        box = [pick]
        torch.distributed.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise InputError(value)
        return value

    def resume(self) -> bool:
        pick = self._verified_checkpoint()
        if pick is None:
            return False
        tag, digests = pick
        guard_engine_loads(self.engine, digests)  # weights-only, and only the files just verified
        try:
            _, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        except RuntimeError as e:  # verified files that do not fit this config (model or ZeRO layout changed)
            raise InputError(f"{self.ckpt_dir / tag}: does not fit this run's config "
                             f"({str(e).splitlines()[0][:200]})") from None
        if client is None:
            raise InputError(f"{self.ckpt_dir / tag}: unreadable DeepSpeed checkpoint")
        self.step = int(client["step"])
        self.ema.shadow = {k: v.to(self.dist.device) for k, v in client["ema"].items()}
        log.info("resumed from %s at step %d", tag, self.step)
        return True

    def export(self) -> Path | None:
        if not self.dist.is_main:
            return None
        lo, hi = self.train_set.lo, self.train_set.hi
        meta = {"stage": self.cfg.stage, "pair": self.cfg.data.pair, "channels": self.channels,
                "scale": self.scale,
                "lr_channels": self.train_set.attrs["lr_channels"],
                "hr_channels": self.train_set.attrs["hr_channels"], "norm_hr": [lo.tolist(), hi.tolist()],
                "norm_lr": [self.train_set.lo_lr.tolist(), self.train_set.hi_lr.tolist()],
                "config": to_dict(self.cfg), "step": self.step, "cloudsr_hpc_version": __version__}
        return export_model(self.out / "export", self.ema.shadow, meta)

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum, _frame):
        log.warning("signal %d: checkpoint at the next step boundary, then exit for requeue", signum)
        self._stop = True

    def fit(self) -> int:
        """Train to ``train.steps``; returns the process exit code (0 done, EXIT_REQUEUE preempted).
        However the loop ends (done, preempted, an error), the input loader's workers are stopped."""
        try:
            return self._fit()
        finally:
            self.close_input()

    def _fit(self) -> int:
        from tqdm import tqdm
        t = self.cfg.train
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        self.resume()
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(self.config_text)
            self._open_tensorboard()
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.dist.is_main,
                   desc=f"stage {self.cfg.stage}")
        t0 = time.perf_counter()
        while self.step < t.steps:
            parts = self.train_step()
            bar.update(1)
            rec = {"step": self.step, **parts, "lr": self.engine.get_lr()[0]}
            if self.step % t.val_every == 0 or self.step == t.steps:
                rec.update(self.validate())
                log.info("step %d %s", self.step, json.dumps({k: round(v, 4) for k, v in rec.items()}))
            self.history.append(rec)
            self._log(rec)
            stop = self._agree(self._stop)
            if self.step % t.ckpt_every == 0 or stop or self.step == t.steps:
                self.save()
            if stop:
                bar.close()
                return EXIT_REQUEUE
        bar.close()
        path = self.export()
        if self.dist.is_main:
            (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
            log.info("done: %d steps in %.1f s; exported %s", self.step, time.perf_counter() - t0, path)
        return 0

    def _agree(self, flag: bool) -> bool:
        """Any rank signalled -> every rank stops at the same step (all must join the save)."""
        v = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.MAX)
        return bool(v.item() > 0)

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:  # tensorboard is in the [hpc] extra
            self.tb = None

    def _log(self, rec: dict) -> None:
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
