"""Model-family adapters behind one protocol (:class:`~senseflow.backbones.base.Backbone`).

Registered pretrained families (``senseflow.backbones.loading.FAMILIES``): ``sdxl``
(:class:`~senseflow.backbones.sdxl.SDXLBackbone`), ``sd3``
(:class:`~senseflow.backbones.flow.SD3FlowBackbone` with the SD 3.5 text side) and ``flux``
(:class:`~senseflow.backbones.flux.FluxBackbone`); the embedded teacher uses
``SD3FlowBackbone`` directly. The names below are imported on first use: importing
``senseflow.backbones.conversions`` must not pay for loading every diffusers pipeline.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Backbone": "senseflow.backbones.base",
    "FAMILIES": "senseflow.backbones.loading",
    "FluxBackbone": "senseflow.backbones.flux",
    "SD3FlowBackbone": "senseflow.backbones.flow",
    "SDXLBackbone": "senseflow.backbones.sdxl",
    "backbone_from_pipeline": "senseflow.backbones.loading",
    "load_backbone": "senseflow.backbones.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import an exported name from its module on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
