"""The backbone registry: ``model.kind`` -> the network class.

A backbone is an ``nn.Module`` built as ``cls(channels, model_cfg)`` with the UNet's interface:
``forward(x_t, y, t, mask)`` -> the x0 prediction, and ``receptive_margin()`` (pixels an input can
travel through one call; the tile halo is built from it).  Adding one is a module under
``models/`` and a line in :data:`BACKBONES`.  One that has a boolean attribute
``activation_checkpointing`` supports ``train.activation_checkpointing`` (the trainer sets it; the
UNet then recomputes block activations in backward); the trainer refuses the option for others.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from ..schema import ModelConfig
from .network import ConditionalUNet

BACKBONES: dict[str, type[nn.Module]] = {
    "unet": ConditionalUNet,
}


def backbone_class(kind: str, key: str = "model.kind") -> type[nn.Module]:
    """The registered class of ``kind``; an unknown one is a :class:`ConfigError` naming ``key``."""
    try:
        return BACKBONES[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"{key}: unknown backbone {kind!r} (known: {', '.join(BACKBONES)})") from None


def build_model(channels: int, cfg: ModelConfig, key: str = "model.kind") -> nn.Module:
    """The backbone ``cfg.kind`` for ``channels`` image channels, freshly initialised."""
    return backbone_class(cfg.kind, key)(channels, cfg)
