"""Backbone registry: ``@register_backbone("srgnn")`` and ``build_backbone("srgnn", n, {...})``."""

from __future__ import annotations

from typing import Any

from intentrec.models.base import Backbone
from intentrec.registry import Registry, import_modules

BACKBONES: Registry[Backbone] = Registry("backbone")
register_backbone = BACKBONES.register

# Modules that register backbones on import. Listed here so the registry is complete on first use.
_BACKBONE_MODULES = (
    "gru4rec",
    "narm",
    "stamp",
    "sasrec",
    "srgnn",
    "gcsan",
    "niser",
    "tagnn",
    "gcegnn",
    "msgat",
    "llmseqsim",
    "msgifsr",
    "miasrec",
    "fpmc",
    "caser",
    "attenmixer",
    "dhcn",
    "share",
)


def load_all() -> None:
    import_modules("intentrec.models.backbones", _BACKBONE_MODULES)


def backbone_class(name: str) -> type[Backbone]:
    load_all()
    return BACKBONES.get(name)


def build_backbone(name: str, num_items: int, config: dict[str, Any] | None = None) -> Backbone:
    cls = backbone_class(name)
    cfg = cls.Config.build(config, where=f"config of backbone '{name}'")
    return cls(num_items, cfg)
