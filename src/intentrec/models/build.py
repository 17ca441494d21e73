"""Building a model by name: a registered backbone, optionally wrapped by a registered method."""

from __future__ import annotations

from intentrec.models.base import BackboneConfig, SessionModel
from intentrec.models.methods.base import MethodConfig
from intentrec.models.methods.registry import build_method_config, method_class
from intentrec.models.registry import backbone_class


def build_session_model(
    backbone: str,
    backbone_config: BackboneConfig,
    num_items: int,
    method: str | None = None,
    method_config: MethodConfig | None = None,
) -> SessionModel:
    """The backbone, wrapped by ``method`` when one is given. Not yet prepared on a dataset."""
    model = backbone_class(backbone)(num_items, backbone_config)
    if method is None:
        return model
    return method_class(method)(model, build_method_config(method, method_config))
