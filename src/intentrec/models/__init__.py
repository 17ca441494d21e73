"""Models: backbones (session encoders) and, later, the LLM methods that wrap them."""

from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.registry import BACKBONES, build_backbone

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "BackboneOutput", "build_backbone"]
