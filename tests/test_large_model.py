"""The production-size configs and the GPU-scale training options (activation checkpointing, fused
AdamW, torch.compile): cheap checks on CPU (the large model is only ever built on the meta device)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cloudsr_hpc.config import load, to_dict
from cloudsr_hpc.models import network
from cloudsr_hpc.models.backbones import build_model
from cloudsr_hpc.models.network import Attention, ConditionalUNet
from cloudsr_hpc.schema import ModelConfig, StageConfig
from cloudsr_hpc.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LARGE = ["stage1_large.yaml", "stage2_large.yaml"]


@pytest.mark.parametrize("name", LARGE)
def test_large_configs_load_and_differ_from_the_small_ones_only_in_model_and_train(name):
    cfg = load(StageConfig, name)
    small = load(StageConfig, name.replace("_large", ""))
    t = cfg.train
    assert (t.precision, t.zero_stage, t.activation_checkpointing, t.fused_adamw, t.compile) == (
        "auto", 2, True, True, True)
    assert cfg.model.kind == small.model.kind == "unet"  # the same code path as the small model
    a, b = to_dict(cfg), to_dict(small)
    for key in ("model", "train", "init_from"):
        a.pop(key), b.pop(key)
    assert a == b
    if cfg.stage == 2:  # Stage 2 starts from the large Stage 1, whose export the small one cannot load
        assert cfg.init_from == f"{load(StageConfig, 'stage1_large.yaml').train.out_dir}/export/model.pt"


@pytest.mark.parametrize("name", LARGE)
def test_large_model_size_and_attention_levels(name):
    mc = load(StageConfig, name).model
    with torch.device("meta"):  # the real module, no memory
        net = build_model(5, mc)
    n = sum(p.numel() for p in net.parameters())
    assert 80e6 <= n <= 130e6, n
    levels = len(mc.channel_mult)
    assert levels >= 3 and sorted(mc.attention_levels) == [levels - 2, levels - 1]
    down = [isinstance(m, Attention) for m in net.down_attn]
    up = [isinstance(m, Attention) for m in net.up_attn][::-1]  # up_attn runs from the lowest level
    assert down == up == [lvl >= levels - 2 for lvl in range(levels)]


def _tiny(dropout=0.1):
    torch.manual_seed(0)
    net = ConditionalUNet(2, ModelConfig(base_channels=8, channel_mult=[1, 2], num_res_blocks=2,
                                         attention_levels=[1], dropout=dropout))
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # a non-zero head: every block gets gradient
    return net


def _loss_and_grads(net, checkpointing: bool, saved: list):
    net.activation_checkpointing = checkpointing
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(2, 2, 16, 16, generator=g) for _ in range(2))
    mask = torch.ones(2, 1, 16, 16)
    mask[1, :, :, :5] = 0  # an invalid strip: masked attention and masked features
    net.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # dropout: the recomputation must draw the same masks
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = (net(x, y, torch.tensor([1, 3]), mask) - x).square().mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


def test_activation_checkpointing_same_loss_and_gradients(monkeypatch):
    calls = []
    real = network.checkpoint
    monkeypatch.setattr(network, "checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    net = _tiny().train()
    saved_plain, saved_ckpt = [], []
    loss0, g0 = _loss_and_grads(net, False, saved_plain)
    assert calls == []
    loss1, g1 = _loss_and_grads(net, True, saved_ckpt)
    # 2 res blocks x 2 levels down and up, 2 mid blocks, attention at level 1 down and up
    assert len(calls) == 12 and all(k == {"use_reentrant": False} for k in calls)
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and all(g0[k].abs().sum() > 0 for k in g0)
    # bitwise: the recomputation runs the same kernels on the same inputs (CPU, fp32)
    assert all(torch.equal(g0[k], g1[k]) for k in g0), max(float((g0[k] - g1[k]).abs().max()) for k in g0)
    assert sum(saved_ckpt) < sum(saved_plain) / 2  # what it is for: far fewer activations kept
    # not while evaluating, nor without grad (inference never pays for it)
    calls.clear()
    with torch.no_grad():
        net(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16), torch.tensor([1]), torch.ones(1, 1, 16, 16))
    net.eval()
    net(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16), torch.tensor([1]), torch.ones(1, 1, 16, 16))
    assert calls == []


def _stub_trainer(device: str, **train):
    tr = Trainer.__new__(Trainer)
    tr.cfg = StageConfig()
    for k, v in train.items():
        setattr(tr.cfg.train, k, v)
    tr.dist = type("D", (), {"device": torch.device(device)})()
    return tr


def test_fused_adamw_only_on_cuda():
    t = StageConfig().train
    before = {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": 0.0, "torch_adam": True}}
    assert t.fused_adamw  # the default
    assert _stub_trainer("cpu")._ds_config()["optimizer"] == before  # CPU: exactly the old optimizer
    assert _stub_trainer("cuda")._ds_config()["optimizer"]["params"] == {**before["params"], "fused": True}
    assert _stub_trainer("cuda", fused_adamw=False)._ds_config()["optimizer"] == before


BUILD = """
import json, sys, torch
from cloudsr_hpc.config import build
from cloudsr_hpc.schema import StageConfig
from cloudsr_hpc.training.distributed import init_distributed
from cloudsr_hpc.training.trainer import Trainer
cfg = build(StageConfig, {"stage": 1, "init_from": None, "data": {"shards": sys.argv[1]},
            "model": {"base_channels": 8, "channel_mult": [1, 2]},
            "train": {"batch_size": 2, "out_dir": sys.argv[2], "activation_checkpointing": True,
                      "fused_adamw": True, "compile": True}})
tr = Trainer(cfg, init_distributed())
opt = tr.engine.basic_optimizer
print(json.dumps({"cls": type(opt).__module__ + "." + type(opt).__name__,
                  "fused": opt.defaults.get("fused"), "foreach": opt.defaults.get("foreach"),
                  "ckpt": tr.engine.module.activation_checkpointing,
                  "compiled": tr.engine.module._compiled_call_impl is not None,
                  "keys_plain": all(not k.startswith("_orig_mod") for k in tr.engine.module.state_dict()),
                  "device": str(tr.dist.device)}))
"""


def test_trainer_wires_the_options(shards, tmp_path):
    """A real Trainer (DeepSpeed engine, no step): torch's AdamW, fused only on CUDA; the network
    flagged for checkpointing and compiled in place (state_dict names unchanged: EMA, export)."""
    env = dict(os.environ,
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext"),
               MASTER_PORT=str(29400 + os.getpid() % 90))
    p = subprocess.run([sys.executable, "-c", BUILD, str(shards), str(tmp_path / "run")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["cls"] == "torch.optim.adamw.AdamW"
    assert r["ckpt"] is True and r["compiled"] is True and r["keys_plain"] is True
    if r["device"].startswith("cuda"):
        assert r["fused"] is True and not r["foreach"]
    else:
        assert not r["fused"] and r["foreach"] is None  # the CPU optimizer of before
