"""The shapes of the YAML files under ``configs/`` (validated by :mod:`cloudsr_hpc.config`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from .config import check_ranges, require

log = logging.getLogger(__name__)


@dataclass
class SynthCloudConfig:
    """``synth.cloud``: the truth field's knobs (``data.synthetic.cloudfield.CloudFieldSpec``; the
    defaults are its defaults, today's field).  ``texture_sigma`` > 0 adds log-normal in-cloud
    texture (``configs/synth_realistic.yaml``: closer to real imagery's edges and spectra)."""
    beta_cloud: float = 3.6          # P(k) ~ k^-beta of the cloud-amount latent field
    beta_top: float = 4.0            # ... of the cloud-top latent field
    beta_land: float = 4.5
    cloud_threshold: float = 0.25    # latent std units: higher -> less cloud
    tau0: float = 40.0               # optical depth scale
    wind_ms: tuple[float, float] = (12.0, 3.0)  # advection (east, north) [m/s]
    evolution_hours: float = 3.0     # decorrelation time of the largest scales
    outer_scale_m: float = 400e3     # spectra flatten above this scale
    warp_m: float = 25e3             # RMS shear displacement (filaments); 0 = isotropic
    texture_sigma: float = 0.0       # log-normal std of in-cloud tau texture; 0 = off
    beta_texture: float = 2.4        # spectrum of the texture latent field
    texture_scale_m: float = 60e3    # texture spectrum flattens above this scale

    def validate(self, where):
        check_ranges(where, self, beta_cloud="[1, 6]", beta_top="[1, 6]", beta_land="[1, 6]",
                     cloud_threshold="[-3, 3]", tau0="> 0", evolution_hours="> 0",
                     outer_scale_m="> 0", warp_m="[0, 100000]", texture_sigma="[0, 2]",
                     beta_texture="[1, 6]", texture_scale_m="> 0")
        require(all(abs(v) <= 100 for v in self.wind_ms), where,
                f"wind_ms = {list(self.wind_ms)}: each component must be in [-100, 100] m/s")


@dataclass
class SynthConfig:
    """The synthetic archive (embedded default)."""
    seed: int = 0
    size: Literal["small", "full"] = "small"
    every_minutes: float = 15.0
    cloud: SynthCloudConfig = field(default_factory=SynthCloudConfig)

    def validate(self, where):
        check_ranges(where, self, seed=">= 0", every_minutes="> 0")


@dataclass
class PairsConfig:
    """Cutting co-located scenes into training patches and HDF5 shards."""
    patch_lr: int = 32                 # LR patch side [px]; HR side = patch_lr * scale
    stride_lr: int = 24                # < patch_lr: overlapping patches
    min_valid: float = 0.95            # drop patches with a smaller fraction of valid pixels
    shard_size: int = 256              # patches per shard
    compression: Literal["gzip", "lzf", "none"] = "gzip"
    compression_level: int = 4
    stage2_min_valid: float = 0.95     # HR-only patches (Stage 2)
    # every Nth slot (cross-sensor) / 1 in N spatial blocks (single-sensor) -> val
    holdout_every: int = 5
    split_block_lr: int = 64           # single-sensor pairs: side of the spatial split blocks, LR pixels
    resampler_radius_hr_px: float = 2.0  # pyresample search radius, HR target pixels

    def validate(self, where):
        require(self.patch_lr >= 4, where, "patch_lr must be >= 4")
        require(0 < self.stride_lr <= self.patch_lr, where, "stride_lr must be in (0, patch_lr]")
        require(0.0 < self.min_valid <= 1.0, where, "min_valid must be in (0, 1]")
        require(self.shard_size >= 1, where, "shard_size must be >= 1")
        require(self.holdout_every >= 2, where, "holdout_every must be >= 2")
        require(self.split_block_lr >= self.patch_lr, where,
                "split_block_lr must be >= patch_lr (patches never straddle blocks)")
        check_ranges(where, self, stage2_min_valid="(0, 1]", compression_level="[0, 9]",
                     resampler_radius_hr_px="> 0")


@dataclass
class DegradationConfig:
    """Stage 2's synthetic HR -> LR degradation, drawn per sample."""
    blur_sigma_lr_px: tuple[float, float] = (0.4, 0.8)   # Gaussian PSF sigma, in LR pixels
    shift_lr_px: float = 0.25                             # max |sub-pixel shift|, LR pixels
    noise_std: tuple[float, float] = (0.0, 0.01)          # in normalised units ([-1, 1] range)
    quantisation_levels: int = 0                          # 0 = off; e.g. 1024 for 10-bit counts
    jpeg_quality: int = 0                                 # 0 = off; 1..100 JPEG-like 8x8 DCT quantisation
    # share of samples conditioned like Stage 2 is behind Stage 1 in the cascade: the HR lacking only
    # its finest scales (Gaussian blur, sigma ~ U(0.25, scale / 2) HR px) instead of bicubic(LR)
    cascade_condition_prob: float = 0.0
    seed: int = 0

    def validate(self, where):
        require(0 <= self.blur_sigma_lr_px[0] <= self.blur_sigma_lr_px[1], where,
                "blur_sigma_lr_px: need 0 <= lo <= hi")
        require(0 <= self.noise_std[0] <= self.noise_std[1], where, "noise_std: need 0 <= lo <= hi")
        require(self.shift_lr_px >= 0, where, "shift_lr_px must be >= 0")
        require(self.quantisation_levels == 0 or self.quantisation_levels >= 2, where,
                "quantisation_levels must be 0 (off) or >= 2")
        require(0 <= self.jpeg_quality <= 100, where, "jpeg_quality must be 0 (off) or 1..100")
        require(0 <= self.cascade_condition_prob <= 1, where, "cascade_condition_prob must be in [0, 1]")
        check_ranges(where, self, seed=">= 0")


@dataclass
class DataConfig:
    pair: str = "seviri_viirs"
    shards: str = "runs/pairs/seviri_viirs"
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    # training samples turned by one of the 8 rotations/reflections of the square (seeded per sample
    # and step), before the degradation: cloud fields have no preferred orientation, so a model
    # trained on one scene's frontal band should not learn one.  HR-only training only (Stage 2, a
    # self-supervised pair): real LR/HR pairs carry a directional misregistration Stage 1 must learn.
    augment: Literal["none", "dihedral"] = "none"

    def validate(self, where):
        require(bool(self.pair) and bool(self.shards), where, "pair and shards must not be empty")


@dataclass
class ModelConfig:
    # the backbone: a name in cloudsr_hpc.models.backbones.BACKBONES (checked there, when it is built;
    # the schema layer cannot see the models layer).  Exports without it were UNets.
    kind: str = "unet"
    base_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attention_levels: list[int] = field(default_factory=list)
    dropout: float = 0.0

    def validate(self, where):
        require(bool(self.kind), where, "kind must name a backbone (e.g. unet)")
        check_ranges(where, self, base_channels=">= 1", num_res_blocks=">= 1", dropout="[0, 1)")
        require(bool(self.channel_mult) and min(self.channel_mult) >= 1, where,
                f"channel_mult = {self.channel_mult}: need at least one level, each multiplier >= 1")
        levels = len(self.channel_mult)  # a level outside the network would be silently ignored
        require(all(0 <= a < levels for a in self.attention_levels), where,
                f"attention_levels = {self.attention_levels}: each must be in [0, {levels - 1}] "
                f"(levels of channel_mult)")


@dataclass
class DiffusionConfig:
    steps: int = 4
    kappa: float = 1.0
    eta_min: float = 0.04 ** 2
    eta_max: float = 0.99
    power: float = 0.3
    # x_T -> x_0: a name in cloudsr_hpc.models.diffusion.SAMPLERS (ancestral | ddim | one_step), checked
    # there; infer.sampler / evaluate.sampler override it without retraining
    sampler: str = "ancestral"

    @staticmethod
    def migrate(data: dict, prefix: str) -> dict:
        """Exports written before ``loss:`` store the training loss weights here: they say nothing
        about sampling, so they are dropped (a stage config moves them first, see StageConfig)."""
        for old in LOSS_KEYS_MOVED:
            if data.pop(old, None) is not None:
                log.debug("%s%s: training-only (moved to loss:), ignored", prefix, old)
        return data

    def validate(self, where):
        require(bool(self.sampler), where, "sampler must name a sampler (e.g. ancestral)")
        require(1 <= self.steps <= 15, where, "steps must be between 1 and 15")
        require(0 < self.eta_min < self.eta_max < 1, where, "need 0 < eta_min < eta_max < 1")
        check_ranges(where, self, kappa="> 0", power="> 0")


# diffusion.<old> -> loss.<new> (moved out of DiffusionConfig: the regression baseline trains with them too)
LOSS_KEYS_MOVED = {"grad_loss_weight": "grad_weight", "spectral_loss_weight": "spectral_weight"}


@dataclass
class LossConfig:
    """Training loss: masked MSE on x0 + the weighted terms of :mod:`cloudsr_hpc.training.losses`."""
    grad_weight: float = 0.0  # L1 between finite differences (gradient preservation)
    spectral_weight: float = 0.0  # L1 between log amplitude spectra

    def validate(self, where):
        check_ranges(where, self, grad_weight=">= 0", spectral_weight=">= 0")


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-4
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    zero_stage: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    val_every: int = 50
    ckpt_every: int = 50
    keep_checkpoints: int = 3  # verified step directories kept (older ones go once a newer one verified)
    log_every: int = 10
    out_dir: str = "runs/stage1"
    # input pipeline: DataLoader worker processes (0: in the training process), batches each prefetches
    num_workers: int = 0
    prefetch_factor: int = 2
    # GPU-scale options (same code path on CPU): recompute activations in backward, fused AdamW
    # kernel on a GPU, torch.compile of the network
    activation_checkpointing: bool = False
    fused_adamw: bool = True
    compile: bool = False

    def validate(self, where):
        require(self.zero_stage in (0, 1, 2), where, "zero_stage must be 0, 1 or 2")
        require(self.batch_size >= 1 and self.steps >= 1, where, "batch_size and steps must be >= 1")
        require(self.lr > 0, where, "lr must be > 0")
        check_ranges(where, self, seed=">= 0", grad_accum=">= 1", grad_clip=">= 0", ema_decay="[0, 1)",
                     val_every=">= 1", ckpt_every=">= 1", log_every=">= 1", num_workers="[0, 64]",
                     prefetch_factor="[1, 64]")
        require(bool(self.out_dir), where, "out_dir must not be empty")
        require(self.keep_checkpoints >= 1, where, "keep_checkpoints must be >= 1")


@dataclass
class StageConfig:
    """``configs/stage1.yaml`` / ``stage2.yaml``."""
    stage: Literal[1, 2, "regression"] = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | None = None

    @staticmethod
    def migrate(data: dict, prefix: str) -> dict:
        """``diffusion.grad_loss_weight`` / ``spectral_loss_weight`` (before ``loss:``) -> ``loss.*``,
        with a deprecation line; both the old and the new key given is refused."""
        diff = data.get("diffusion")
        if not isinstance(diff, dict) or not any(k in diff for k in LOSS_KEYS_MOVED):
            return data
        diff = data["diffusion"] = dict(diff)
        loss = data.get("loss")
        loss = data["loss"] = dict(loss) if isinstance(loss, dict) else {} if loss is None else loss
        for old, new in LOSS_KEYS_MOVED.items():
            if old not in diff:
                continue
            value = diff.pop(old)
            if not isinstance(loss, dict):
                continue  # a malformed loss: section is reported by build
            require(new not in loss, f"{prefix}diffusion.{old}",
                    f"moved to loss.{new}, which is given too: keep only loss.{new}")
            log.warning("%sdiffusion.%s is deprecated: read as loss.%s (move it there)", prefix, old, new)
            loss[new] = value
        return data


@dataclass
class InferConfig:
    """``configs/infer.yaml``."""
    pair: str = "seviri_viirs"
    tile_lr: int = 128
    overlap_lr: int = 16
    batch_size: int = 8  # tiles per forward; 0: from the GPU's free memory (8 on a CPU)
    stages: Literal["1", "2", "cascade", "regression"] = "cascade"
    halo_hr: int = -1  # -1: from the model's measured receptive margin (exact tiling when it fits)
    seed: int = 0
    # "": each diffusion stage's stored diffusion.sampler; else a SAMPLERS name for every diffusion stage
    sampler: str = ""
    chunk: int = 512  # HR pixels; bands of ranks start on chunk rows
    packing: Literal["float32", "int16"] = "float32"
    complevel: int = 4
    # who writes the deflate streams: auto (ISA-L via python-isal when installed, ~12x zlib), zlib, isal
    deflate: Literal["auto", "zlib", "isal"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the networks (GPU sites; first call compiles)
    # torch threads per rank on CPU (0: torch's default); equal counts give bitwise-equal output
    cpu_threads: int = 0
    writer_threads: int = 2  # chunk compression threads per rank
    quicklook: bool = True
    members: int = 1  # ensemble members per scene (> 1: mean and standard deviation written per channel)
    keep_members: bool = False  # with members > 1: also every member, along a ``member`` dimension
    calibration: str = ""  # with members > 1: spread inflation fitted by ``submit calibrate`` ("" = none)
    stage1_checkpoint: str = "runs/stage1/export/model.pt"
    stage2_checkpoint: str = "runs/stage2/export/model.pt"
    regression_checkpoint: str = "runs/regression/export/model.pt"
    archive: str = "runs/archive"
    out_dir: str = "runs/infer"

    def validate(self, where):
        require(self.overlap_lr >= 0, where, "overlap_lr must be >= 0")
        require(self.tile_lr > 2 * self.overlap_lr, where, "tile_lr must exceed twice overlap_lr")
        require(self.batch_size >= 0, where, "batch_size must be >= 0 (0: chosen from free device memory)")
        require(self.chunk >= 16, where, "chunk must be >= 16")
        require(0 <= self.complevel <= 9, where, "complevel must be 0..9")
        # halo_hr -1: from the model's receptive margin; thread counts 0: torch's default / one writer
        check_ranges(where, self, halo_hr=">= -1", seed=">= 0", cpu_threads="[0, 1024]",
                     writer_threads="[0, 256]", members="[1, 256]")
        require(bool(self.pair), where, "pair must not be empty")
        if self.deflate == "isal":
            from importlib.util import find_spec
            require(find_spec("isal") is not None, where, "deflate: isal is not installed (pip install isal)")


@dataclass
class FSSConfig:
    """Cloud-mask events for the fractions skill score, in physical units per quantity."""
    windows: list[int] = field(default_factory=lambda: [1, 5, 17])  # neighbourhood sides, HR pixels (odd)
    table_window: int = 5
    # K: cold tops
    brightness_temperature_below: list[float] = field(default_factory=lambda: [270.0, 250.0, 230.0])
    reflectance_above: list[float] = field(default_factory=lambda: [30.0, 50.0])  # %: bright cloud

    def validate(self, where):
        require(all(w >= 1 and w % 2 == 1 for w in self.windows), where, "windows must be odd and >= 1")
        require(self.table_window in self.windows, where, "table_window must be one of windows")


@dataclass
class EvaluateConfig:
    """``configs/evaluate.yaml``: the comparison protocol."""
    pair: str = "seviri_viirs"
    methods: list[str] = field(default_factory=lambda: ["bicubic", "regression", "stage1", "stage2",
                                                        "cascade"])
    stage1_checkpoint: str = "runs/stage1/export/model.pt"
    stage2_checkpoint: str = "runs/stage2/export/model.pt"
    regression_checkpoint: str = "runs/regression/export/model.pt"
    pairs: str = "runs/pairs/seviri_viirs/val"  # held-out shards (protocol 1)
    max_pairs: int = 0  # 0: all held-out pairs
    batch_size: int = 8
    seed: int = 0  # diffusion noise and the self-supervised degradation
    # "": each diffusion stage's stored diffusion.sampler; else a SAMPLERS name for every diffusion stage
    sampler: str = ""
    members: int = 1  # ensemble members per stochastic method (> 1: CRPS, spread-skill, rank histogram)
    calibration: str = ""  # spread inflation (``submit calibrate``) for the methods it was fitted for
    data_range: float = 2.0  # PSNR/SSIM range in normalised units ([-1, 1])
    spectrum_tile: int = 128  # HR tile side for Welch-averaged spectra (and LPIPS tiles)
    fss: FSSConfig = field(default_factory=FSSConfig)
    lpips: bool = True
    weights_dir: str = ""  # "" -> $CLOUDSR_WEIGHTS or $TORCH_HOME/hub/checkpoints
    # scene protocol (--hr): tiles, and rows streamed per band (a multiple of spectrum_tile)
    tile_lr: int = 64
    overlap_lr: int = 8
    band_rows: int = 256
    cpu_threads: int = 0
    out_dir: str = "runs/evaluate"

    def validate(self, where):
        known = {"bicubic", "regression", "stage1", "stage2", "cascade"}
        require(set(self.methods) <= known and self.methods, where, f"methods must be among {sorted(known)}")
        require(self.band_rows % self.spectrum_tile == 0, where,
                "band_rows must be a multiple of spectrum_tile")
        require(self.tile_lr > 2 * self.overlap_lr, where, "tile_lr must exceed twice overlap_lr")
        require(self.spectrum_tile >= 16 and self.batch_size >= 1, where,
                "spectrum_tile >= 16, batch_size >= 1")
        check_ranges(where, self, max_pairs=">= 0", seed=">= 0", data_range="> 0", overlap_lr=">= 0",
                     band_rows=">= 1", cpu_threads="[0, 1024]", members="[1, 64]")


# sbatch/srun --gpu-bind=[verbose,]TYPE
GPU_BIND = (r"(?:verbose,)?(?:closest|none|(?:single|per_task):[0-9]{1,3}"
            r"|(?:map_gpu|mask_gpu):[0-9a-fA-Fx*,]+)")


@dataclass
class ClusterProfile:
    """``configs/cluster/<name>.yaml``: what a site needs in its job scripts.  A 0 takes the job
    definition's value (``jobs/<kind>.yaml``)."""
    executor: Literal["slurm", "local", "debug"] = "slurm"
    partition: str = ""
    account: str = ""
    qos: str = ""
    gpus_per_node: int = 0
    cpus_per_task: int = 0
    mem_gb: int = 0                                  # --mem per node (0: the job's mem_gb_per_task x tasks)
    time_minutes: int = 0
    setup: list[str] = field(default_factory=list)   # module load / conda activate lines (CLOUDSR_SETUP)
    array_parallelism: int = 0
    # GPU sites: one rank per GPU.  gpus_per_task N > 0 asks --gpus-per-task=N instead of
    # --gpus-per-node (gpus_per_node / N ranks per node); gpu_bind is --gpu-bind (single:1, closest,
    # map_gpu:..., per_task:N, none): each rank sees its own GPU (cloudsr_hpc.core.devices)
    gpus_per_task: int = 0
    gpu_bind: str = ""
    # exported in the jobs after the setup lines (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG, ...)
    env: dict[str, str | int] = field(default_factory=dict)

    def validate(self, where):  # 0: the job definition's value
        import re
        check_ranges(where, self, gpus_per_node=">= 0", cpus_per_task=">= 0", mem_gb=">= 0",
                     time_minutes=">= 0", array_parallelism=">= 0", gpus_per_task=">= 0")
        require(not (self.gpus_per_task and self.gpus_per_node % self.gpus_per_task),
                f"{where}: gpus_per_task",
                f"{self.gpus_per_task} does not divide gpus_per_node {self.gpus_per_node}")
        require(not self.gpu_bind or re.fullmatch(GPU_BIND, self.gpu_bind) is not None, f"{where}: gpu_bind",
                f"{self.gpu_bind!r}: expected closest, single:N, per_task:N, map_gpu:LIST, mask_gpu:LIST "
                f"or none")
        for key in self.env:
            require(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) is not None, f"{where}: env",
                    f"{key!r}: not an environment variable name")


@dataclass
class JobResources:
    """What one job asks Slurm for (the cluster profile and the command line override it)."""
    nodes: int = 1
    ntasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb_per_task: int = 4   # --mem = this x tasks per node (a cascade rank peaks at 2.6-3.1 GB)
    time_minutes: int = 60

    def validate(self, where):
        check_ranges(where, self, nodes=">= 1", ntasks_per_node=">= 1", cpus_per_task=">= 1",
                     gpus_per_node=">= 0", mem_gb_per_task=">= 0", time_minutes=">= 1")


# sbatch --signal=[{R|B}:]SIG[@seconds]: B: signals only the batch shell (slurm/campaign.sh forwards it)
JOB_SIGNAL = r"(?:[RB]{1,2}:)?(?:SIG)?(?:USR1|USR2|TERM|INT|HUP|QUIT|CONT|[0-9]{1,2})@[0-9]{1,4}"


@dataclass
class JobDef:
    """``jobs/<kind>.yaml``: what a job is, as data, every field used by the submitter: ``script``
    (what sbatch submits; ``{stage}`` for train), ``resources`` (sbatch options), ``requeue``
    (``--requeue``/``--no-requeue``), ``signal`` (``--signal``), ``array_parallelism`` (campaign's
    ``%``); ``inputs``/``outputs`` are shown by ``--dry-run``."""
    kind: Literal["train", "infer", "campaign"]
    script: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    resources: JobResources = field(default_factory=JobResources)
    requeue: bool = True
    signal: str = ""
    array_parallelism: int = 0

    def validate(self, where):
        import re
        check_ranges(where, self, array_parallelism=">= 0")
        require(re.fullmatch(r"slurm/[A-Za-z0-9_.{}-]+\.sh", self.script) is not None, f"{where}: script",
                f"{self.script!r}: expected slurm/NAME.sh")
        require(("{stage}" in self.script) == (self.kind == "train")
                and not set("{}") & set(self.script.replace("{stage}", "")), f"{where}: script",
                f"{self.script!r}: a train job's script has '{{stage}}' (1 or 2), no other job's has any "
                f"placeholder")
        require(not self.signal or re.fullmatch(JOB_SIGNAL, self.signal) is not None, f"{where}: signal",
                f"{self.signal!r}: expected [B:]SIGNAL@SECONDS (e.g. USR1@60)")
        require(self.kind == "campaign" or not self.array_parallelism, f"{where}: array_parallelism",
                "only a campaign is a job array")


@dataclass
class PairsFile:
    """``configs/pairs.yaml``."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
