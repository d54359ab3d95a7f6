"""The sampler and backbone registries: ancestral unchanged, ddim deterministic after the prior,
one_step one call; receptive margins from the calls each sampler makes; unknown names refused by
key; old exports load; ``infer --set sampler=ddim`` tiles exactly and records its sampler."""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from cloudsr_hpc.config import load, to_dict
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.errors import ConfigError, InputError
from cloudsr_hpc.evaluation.protocol import load_methods
from cloudsr_hpc.inference.mpi import Ranks
from cloudsr_hpc.inference.pipeline import ScenePipeline, load_cascade
from cloudsr_hpc.models.backbones import BACKBONES, build_model
from cloudsr_hpc.models.cascade import Cascade, Stage
from cloudsr_hpc.models.diffusion import SAMPLERS, GlobalNoise, ResShift
from cloudsr_hpc.models.export import export_model, load_model
from cloudsr_hpc.models.network import ConditionalUNet
from cloudsr_hpc.schema import DiffusionConfig, EvaluateConfig, InferConfig, ModelConfig, StageConfig
from tests.conftest import make_export

NAMES = ("ancestral", "ddim", "one_step")


def diffusion(steps=4, sampler="ancestral", **kw) -> ResShift:
    return ResShift.from_config(DiffusionConfig(steps=steps, sampler=sampler, **kw))


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(3)
    net = ConditionalUNet(2, ModelConfig(base_channels=8, channel_mult=[1, 2], num_res_blocks=1)).eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.05)  # the residual head matters
    return net


def unet_denoiser(net, counter=None):
    def denoise(x, y, t):
        if counter is not None:
            counter.append(int(t[0]))
        return net(x, y, t, torch.ones_like(x[:, :1]))
    return denoise


def noise_source(seed, prior_seed=None, steps=None, shape=(2, 2, 16, 16)):
    """GlobalNoise fields by step; ``prior_seed`` draws the prior (k = steps) from another stream."""
    n, c, h, w = shape

    def nz(k):
        s = prior_seed if prior_seed is not None and k == steps else seed
        return GlobalNoise(s).batch(k, c, [(40 * i, 80) for i in range(n)], h, w)
    return nz


# ------------------------------------------------------------------- the previous implementation
def _old_eta_schedule(steps, eta_min, eta_max, power):
    if steps == 1:
        return torch.tensor([eta_max], dtype=torch.float64)
    lo, hi = math.sqrt(eta_min), math.sqrt(eta_max)
    frac = torch.linspace(0, 1, steps, dtype=torch.float64) ** power
    return (lo * (hi / lo) ** frac) ** 2


def _old_sample(steps, kappa, eta_min, eta_max, power, denoise, y, noise):
    """ResShift.sample before the sampler registry, copied (schedule, prior, posterior inlined)."""
    eta_all = _old_eta_schedule(steps, eta_min, eta_max, power)
    eta_prev_all = torch.cat([torch.zeros(1, dtype=torch.float64), eta_all[:-1]])

    def at(v, t, like):
        return v.to(like.device)[t - 1].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    x = y + kappa * math.sqrt(float(eta_all[-1])) * noise(steps)
    n = y.shape[0]
    x0 = x
    for t in range(steps, 0, -1):
        tt = torch.full((n,), t, dtype=torch.long, device=y.device)
        x0 = denoise(x, y, tt)
        if t > 1:
            eta, prev = at(eta_all, tt, x), at(eta_prev_all, tt, x)
            alpha = eta - prev
            mean = prev / eta * x + alpha / eta * x0
            var = kappa ** 2 * prev / eta * alpha
            x = mean + var.sqrt() * noise(t - 1)
    return x0


@pytest.mark.parametrize("steps,kappa", [(1, 1.0), (4, 1.0), (4, 0.1), (7, 2.0)])
def test_ancestral_is_bitwise_the_previous_sampler(unet, steps, kappa):
    y = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    d = diffusion(steps, kappa=kappa)
    nz = noise_source(5)
    new = d.sample(unet_denoiser(unet), y, nz)
    with torch.no_grad():
        old = _old_sample(steps, kappa, d.eta_min, d.eta_max, d.power, unet_denoiser(unet), y, nz)
    assert torch.equal(new, old)
    assert DiffusionConfig().sampler == "ancestral"  # the default is the previous sampler


def test_ddim_is_deterministic_given_the_prior(unet):
    y = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    d = diffusion(4, sampler="ddim")
    a = d.sample(unet_denoiser(unet), y, noise_source(7, prior_seed=1, steps=4))
    b = d.sample(unet_denoiser(unet), y, noise_source(8, prior_seed=1, steps=4))  # other intermediate noise
    assert torch.equal(a, b)
    c = d.sample(unet_denoiser(unet), y, noise_source(7, prior_seed=2, steps=4))  # another prior
    assert not torch.equal(a, c)
    anc = diffusion(4)  # ancestral does use the intermediate noise
    assert not torch.equal(anc.sample(unet_denoiser(unet), y, noise_source(7, prior_seed=1, steps=4)),
                           anc.sample(unet_denoiser(unet), y, noise_source(8, prior_seed=1, steps=4)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_every_sampler_returns_x0_from_a_perfect_denoiser(name, steps):
    g = torch.Generator().manual_seed(steps)
    x0, y = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    d = diffusion(steps, sampler=name, kappa=0.7)
    eps = torch.randn(2, 3, 8, 8, generator=g)
    seen = {}

    def denoise(x, y_, t):
        seen[int(t[0])] = x.clone()
        return x0

    out = d.sample(denoise, y, lambda k: eps if k == steps else torch.randn(2, 3, 8, 8, generator=g))
    assert (out - x0).abs().max().item() < 1e-6
    if name == "ddim":  # every state lies on the forward marginal with the noise implied by the prior
        eta_t = float(d.eta[-1])
        implied = (seen[steps] - x0 - eta_t * (y - x0)) / (d.kappa * math.sqrt(eta_t))
        for t, x in seen.items():
            assert torch.allclose(x, d.q_sample(x0, y, torch.full((2,), t), implied), atol=1e-5)


@pytest.mark.parametrize("steps", [1, 3, 4])
def test_network_calls_are_counted_and_declared(unet, steps):
    y = torch.randn(1, 2, 16, 16)
    for name, expected in (("ancestral", steps), ("ddim", steps), ("one_step", 1)):
        calls = []
        d = diffusion(steps, sampler=name)
        d.sample(unet_denoiser(unet, calls), y, noise_source(1, shape=(1, 2, 16, 16)))
        assert len(calls) == expected == d.network_calls
        assert calls == (list(range(steps, 0, -1)) if name != "one_step" else [steps])  # one_step at t = T


def test_one_step_is_the_x0_prediction_of_the_prior(unet):
    y = torch.randn(1, 2, 16, 16)
    nz = noise_source(4, shape=(1, 2, 16, 16))
    d = diffusion(3, sampler="one_step")
    with torch.no_grad():
        ref = unet(d.prior_sample(y, nz(3)), y, torch.full((1,), 3), torch.ones(1, 1, 16, 16))
    assert torch.equal(d.sample(unet_denoiser(unet), y, nz), ref)


# ------------------------------------------------------------------- receptive margins
@pytest.fixture(scope="module")
def stage2_t3(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("t3") / "s2", stage=2, steps=3, seed=1, out_std=0.2)


def test_receptive_margin_counts_the_network_calls_of_each_sampler(stage2_t3, models):
    def loaded(path, **kw):  # the network's margin measured once (each stage: its own network)
        st = Stage.load(path, **kw)
        m = st.model.receptive_margin()
        st.model.receptive_margin = lambda: m
        return st, m

    st, m = loaded(stage2_t3)
    for name in NAMES:
        casc = Cascade([Stage(st.model, st.diffusion.with_sampler(name), st.meta)])
        assert casc.receptive_margin_hr() == 2 * 4 + {"ancestral": 3, "ddim": 3, "one_step": 1}[name] * m
    reg, m_reg = loaded(models["reg"], sampler="ddim")  # the regression baseline: one pass, no sampler
    assert reg.diffusion is None and Cascade([reg]).receptive_margin_hr() == 8 + m_reg
    (s1, m1), (s2, m2) = loaded(models["s1"], sampler="one_step"), loaded(models["s2"], sampler="ddim")
    assert Cascade([s1, s2]).receptive_margin_hr() == 8 + 1 * m1 + 2 * m2


@pytest.mark.parametrize("name", NAMES)
def test_an_input_change_travels_no_further_than_the_declared_margin(stage2_t3, name):
    """Perturb one LR pixel: the HR output changes within the margin only, and a multi-call sampler
    does reach beyond one network's margin (so a one-call margin would break exact tiling)."""
    casc = Cascade([Stage.load(stage2_t3, sampler=name)])
    net_margin = casc.stages[0].model.receptive_margin()
    n, h = 5, 48  # LR side; HR 192 > 2 * the T = 3 margin
    lr = torch.randn(1, n, h, h, generator=torch.Generator().manual_seed(0)) * 0.3
    bumped = lr.clone()
    bumped[0, :, h // 2, h // 2] += 0.5
    mask = torch.ones(1, n, h, h)
    a, _ = casc(lr, mask, [(0, 0)])
    b, _ = casc(bumped, mask, [(0, 0)])
    rows, cols = ((a - b).abs().amax(dim=(0, 1)) > 0).nonzero(as_tuple=True)
    lo, hi = 4 * (h // 2), 4 * (h // 2) + 3  # the bumped LR pixel's HR block
    reach = int(max((lo - rows).max(), (rows - hi).max(), (lo - cols).max(), (cols - hi).max()))
    assert 0 < reach <= casc.receptive_margin_hr()
    if name != "one_step":
        assert reach > 2 * 4 + net_margin


# ------------------------------------------------------------------- names refused by key
def test_unknown_sampler_and_backbone_are_refused_naming_the_key(models, tmp_path):
    with pytest.raises(ConfigError, match=r"diffusion\.sampler.*'bogus'.*ancestral, ddim, one_step"):
        diffusion(2, sampler="bogus")
    with pytest.raises(ConfigError, match=r"model\.kind.*'transformer'.*unet"):
        build_model(2, ModelConfig(kind="transformer"))
    with pytest.raises(ConfigError, match=r"infer\.sampler.*'bogus'"):
        load_cascade(load(InferConfig, "infer.yaml", [f"stage2_checkpoint={models['s2']}", "stages=2",
                                                      "sampler=bogus"]))
    ecfg = load(EvaluateConfig, "evaluate.yaml", [f"stage2_checkpoint={models['s2']}", "methods=[stage2]",
                                                  "sampler=bogus"])
    with pytest.raises(ConfigError, match=r"evaluate\.sampler.*'bogus'"):
        load_methods(ecfg)
    with pytest.raises(ConfigError, match=r"sampler"):
        load(StageConfig, "stage2.yaml", ["diffusion.sampler="])  # empty
    # the trainer refuses before reading any data
    from cloudsr_hpc.training.trainer import Trainer
    cfg = load(StageConfig, "stage2.yaml", ["model.kind=transformer", f"data.shards={tmp_path}/none"])
    with pytest.raises(ConfigError, match=r"model\.kind.*'transformer'"):
        Trainer(cfg, None)
    # an export naming a backbone or sampler this version lacks is a foreign export
    state, meta = load_model(models["s2"])
    meta["config"]["model"]["kind"] = "transformer"
    path = export_model(tmp_path / "foreign", state, meta)
    with pytest.raises(InputError, match=r"foreign.*model\.kind.*'transformer'"):
        Stage.load(path)
    assert set(BACKBONES) >= {"unet"} and set(SAMPLERS) == set(NAMES)


def test_old_export_without_kind_or_sampler_loads(tmp_path):
    path = make_export(tmp_path / "new", stage=2, steps=2)
    state, meta = load_model(path)
    assert meta["config"]["model"]["kind"] == "unet" and meta["config"]["diffusion"]["sampler"] == "ancestral"
    del meta["config"]["model"]["kind"], meta["config"]["diffusion"]["sampler"]
    old = export_model(tmp_path / "old", state, meta)
    assert "kind" not in load_model(old)[1]["config"]["model"]
    st = Stage.load(old)
    assert isinstance(st.model, ConditionalUNet) and st.diffusion.sampler == "ancestral"
    assert Cascade([st]).describe() == "stage 2 (T=2, ancestral)"
    assert Cascade([Stage.load(old, sampler="ddim")]).describe() == "stage 2 (T=2, ddim)"


def test_stage_configs_round_trip_kind_and_sampler():
    cfg = load(StageConfig, "stage2.yaml", ["diffusion.sampler=one_step"])
    d = to_dict(cfg)
    assert d["model"]["kind"] == "unet" and d["diffusion"]["sampler"] == "one_step"
    assert ResShift.from_config(cfg.diffusion).sampler == "one_step"
    assert ResShift.from_config(cfg.diffusion, sampler="ddim").sampler == "ddim"


# ------------------------------------------------------------------- inference with an override
def test_infer_with_ddim_tiles_exactly_and_records_its_sampler(models, scene, tmp_path):
    """Stage 2 (T = 2) with ``--set sampler=ddim``: two tile sizes under exact tiling agree to 1e-5
    (ddim is deterministic given the position-keyed prior), and ``source`` names the sampler."""
    base = [f"stage2_checkpoint={models['s2']}", "stages=2", "quicklook=false", "chunk=64",
            "overlap_lr=28", "cpu_threads=1"]
    outs, sources = {}, {}
    for name, tile, sampler in (("t64", 64, "ddim"), ("t80", 80, "ddim"), ("anc", 64, "")):
        cfg = load(InferConfig, "infer.yaml", base + [f"tile_lr={tile}", f"sampler={sampler}"])
        pipe = ScenePipeline(cfg, load_registry(), Ranks(), tmp_path / name, progress=False)
        if sampler:
            net_margin = pipe.cascade.stages[0].model.receptive_margin()
            assert pipe.blend.exact and pipe.cascade.receptive_margin_hr() == 8 + 2 * net_margin
        res = pipe.run([scene])
        with xr.open_dataset(res.path) as ds:
            outs[name] = np.stack([ds[v].values for v in ("I01", "I02", "I03", "I04", "I05")])
            sources[name] = ds.attrs["source"]
    assert "stage 2 (T=2, ddim)" in sources["t64"] and "stage 2 (T=2, ancestral)" in sources["anc"]
    assert np.isfinite(outs["t64"]).any()
    assert np.array_equal(np.isnan(outs["t64"]), np.isnan(outs["t80"]))
    scale = np.array([110.0, 110.0, 110.0, 140.0, 130.0])[:, None, None] / 2  # physical -> normalised
    assert np.nanmax(np.abs(outs["t64"] - outs["t80"]) / scale) < 1e-5
    assert np.nanmax(np.abs(outs["t64"] - outs["anc"]) / scale) > 1e-3  # the override took effect
