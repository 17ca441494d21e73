"""Method registry: ``@register_method("llm4sbr")`` and ``build_method("llm4sbr", backbone, {...})``."""

from __future__ import annotations

from typing import Any

from intentrec.models.base import Backbone
from intentrec.models.methods.base import Method, MethodConfig
from intentrec.registry import Registry, import_modules

METHODS: Registry[Method] = Registry("method")
register_method = METHODS.register

_METHOD_MODULES = ("llm4sbr", "dmsrec", "semsr", "llmgr")


def load_all() -> None:
    import_modules("intentrec.models.methods", _METHOD_MODULES)


def method_class(name: str) -> type[Method]:
    load_all()
    return METHODS.get(name)


def build_method_config(name: str, values: dict[str, Any] | MethodConfig | None) -> MethodConfig:
    cls = method_class(name)
    if isinstance(values, MethodConfig):
        values = values.model_dump()
    return cls.Config.build(values, where=f"config of method '{name}'")


def build_method(name: str, backbone: Backbone, config: dict[str, Any] | MethodConfig | None = None) -> Method:
    return method_class(name)(backbone, build_method_config(name, config))
