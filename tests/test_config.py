import logging

import numpy as np
import pytest

from cloudsr_hpc.config import build, config_path, load, read_yaml, to_dict
from cloudsr_hpc.core.norm import denormalise, normalise
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.schema import ClusterProfile, DiffusionConfig, InferConfig, PairsFile, StageConfig


@pytest.mark.parametrize("name,cls", [("stage1.yaml", StageConfig), ("stage2.yaml", StageConfig),
                                      ("regression.yaml", StageConfig), ("regression_abi.yaml", StageConfig),
                                      ("stage2_abi.yaml", StageConfig),
                                      ("infer.yaml", InferConfig), ("pairs.yaml", PairsFile),
                                      ("cluster/local.yaml", ClusterProfile),
                                      ("cluster/example-gpu.yaml", ClusterProfile)])
def test_shipped_configs_validate(name, cls):
    assert isinstance(load(cls, name), cls)


def test_override_sets_nested_value_with_yaml_types():
    cfg = load(StageConfig, "stage1.yaml",
               ["train.lr=1e-4", "model.channel_mult=[1,2]", "train.zero_stage=2"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.channel_mult == [1, 2]
    assert cfg.train.zero_stage == 2


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "train.lrr: unknown key"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("train.zero_stage=3", "zero_stage must be 0, 1 or 2"),
    ("train.batch_size=2.5", "train.batch_size: expected an integer"),
    ("diffusion.steps=40", "steps must be between 1 and 15"),
])
def test_bad_values_name_file_and_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load(StageConfig, "stage1.yaml", [override])
    assert needle in str(e.value)
    assert "stage1.yaml" in str(e.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: [1, 2\n  steps: 3\n")
    with pytest.raises(ConfigError) as e:
        load(StageConfig, p)
    msg = str(e.value)
    assert str(p) in msg and "malformed YAML" in msg and "line" in msg
    assert "\n" not in msg


def test_registry_pairs_and_channels():
    reg = load_registry()
    sv = reg.pair("seviri_viirs")
    assert sv.scale == 4 and sv.lr_channels[0] == "VIS006" and sv.hr_channels[-1] == "I05"
    ch = reg.sensor("seviri").channel("IR_108")
    assert ch.quantity == "brightness_temperature" and ch.units == "K"
    x, _ = normalise(np.full((1, 1, 1), 273.0, np.float32), [ch.norm[0]], [ch.norm[1]])
    assert -1 < float(x[0, 0, 0]) < 1
    assert float(denormalise(x, [ch.norm[0]], [ch.norm[1]])[0, 0, 0]) == pytest.approx(273.0)
    with pytest.raises(ConfigError, match="unknown sensor 'goes'"):
        reg.sensor("goes")


def test_registry_rejects_bad_pair(tmp_path):
    text = (load_registry().source and open(load_registry().source).read())
    bad = tmp_path / "sensors.yaml"
    bad.write_text(text.replace("[IR_108, I05]", "[IR_108, I99]"))
    with pytest.raises(ConfigError, match=r"pairs.seviri_viirs.channels\[4\].*'I99' is not a viirs channel"):
        load_registry(bad)
    bad.write_text(text.replace("scale: 4\n    max_dt_minutes: 10\n    simulate:\n      hr_dt_minutes: 4.0",
                                "scale: 5\n    max_dt_minutes: 10\n    simulate:\n      hr_dt_minutes: 4.0"))
    with pytest.raises(ConfigError, match="scale: must be 2, 3, 4 or 8"):
        load_registry(bad)


def test_adding_a_sensor_is_yaml_only(tmp_path):
    text = open(load_registry().source).read()
    ahi = """
  ahi:
    long_name: Himawari AHI
    platforms: [Himawari-9]
    kind: geostationary
    sub_lon: 140.7
    full_disk: 5500
    repeat_cycle_minutes: 10
    formats:
      hsd:
        reader: ahi_hsd
        patterns: ['HS_{platform_shortname}_{start_time:%Y%m%d_%H%M}_B{band:2d}_{area}_R{res_id:d}\
_S{segment:2d}{total_segments:2d}.DAT']
    channels:
      B13: {wavelength_um: 10.4, quantity: brightness_temperature, norm: [190.0, 320.0], resolution_m: 2000.0}
"""
    p = tmp_path / "sensors.yaml"
    p.write_text(text.replace("\npairs:", ahi + "\npairs:"))
    reg = load_registry(p)
    assert reg.sensor("ahi").channel("B13").resolution_m == 2000.0


# ------------------------------------------------------------------ loss weights: loss:, not diffusion:
OLD_STAGE = """stage: regression
diffusion:
  steps: 1
  grad_loss_weight: 0.2
  spectral_loss_weight: 0.05
"""


def test_loss_weights_live_in_their_own_section():
    assert load(StageConfig, "stage1.yaml").loss.grad_weight == pytest.approx(0.1)
    reg = load(StageConfig, "regression.yaml")
    assert reg.loss.grad_weight == 0.0 and reg.loss.spectral_weight == 0.0
    assert "diffusion" not in read_yaml(config_path("regression.yaml"))  # no dummy section any more
    d = to_dict(load(StageConfig, "stage1.yaml", ["loss.spectral_weight=0.5"]))
    assert d["loss"] == {"grad_weight": 0.1, "spectral_weight": 0.5}
    assert not {"grad_loss_weight", "spectral_loss_weight"} & set(d["diffusion"])


def test_old_loss_keys_under_diffusion_still_load_with_one_deprecation_line(tmp_path, caplog):
    p = tmp_path / "old.yaml"
    p.write_text(OLD_STAGE)
    with caplog.at_level(logging.WARNING, logger="cloudsr_hpc.schema"):
        cfg = load(StageConfig, p)
    assert cfg.loss.grad_weight == pytest.approx(0.2) and cfg.loss.spectral_weight == pytest.approx(0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("deprecated" in m and "\n" not in m for m in lines)
    assert f"{p}: diffusion.grad_loss_weight is deprecated: read as loss.grad_weight" in lines[0]
    # a bad value names the key it is read as
    with pytest.raises(ConfigError, match=r"old\.yaml: loss\.grad_weight = -1\.0: must be >= 0"):
        load(StageConfig, p, ["diffusion.grad_loss_weight=-1"])
    # the old key and the new one together: refused, naming both
    with pytest.raises(ConfigError,
                       match=r"stage1\.yaml: diffusion\.grad_loss_weight: moved to loss\.grad_weight"):
        load(StageConfig, "stage1.yaml", ["diffusion.grad_loss_weight=0.3"])


def test_old_export_with_loss_weights_under_diffusion_loads(tmp_path):
    """Exports written before ``loss:`` carry the weights in their stored diffusion config."""
    from cloudsr_hpc.models.cascade import Cascade, Stage
    from cloudsr_hpc.models.export import export_model, load_model
    from tests.conftest import make_export
    state, meta = load_model(make_export(tmp_path / "new", stage=2, steps=2))
    del meta["config"]["loss"]
    meta["config"]["diffusion"].update(grad_loss_weight=0.1, spectral_loss_weight=0.0)
    st = Stage.load(export_model(tmp_path / "old", state, meta))
    assert Cascade([st]).describe() == "stage 2 (T=2, ancestral)"
    cfg = build(DiffusionConfig, {"steps": 3, "grad_loss_weight": 0.1}, "x.pt: diffusion")
    assert cfg.steps == 3
    with pytest.raises(ConfigError, match="diffusion.loss_weight: unknown key"):
        build(DiffusionConfig, {"loss_weight": 0.1}, "x.pt: diffusion")
