"""Typed configuration shared by every component.

Each component (backbone, method, trainer, encoder, LLM backend) declares one ``Config`` subclass.
Unknown keys are rejected with the key's name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from intentrec.errors import ConfigError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base class: forbids unknown keys, validates assignments, freezes nothing."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        space = cls.__dict__.get("search_space")
        if space is not None:  # a subclass's own declared ranges (intentrec.search_space), checked on import
            from intentrec.search_space import check_space

            check_space(cls, space)

    @classmethod
    def build(cls: type[C], values: dict[str, Any] | None = None, *, where: str = "config") -> C:
        """Validate ``values`` into this config; errors name every offending field."""
        try:
            return cls.model_validate(values or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls, where)) from None


def format_validation_error(exc: ValidationError, cls: type[BaseModel], where: str) -> str:
    lines = [f"invalid {where} ({cls.__name__}):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            known = ", ".join(sorted(cls.model_fields))
            lines.append(f"  unknown key '{field}' (known keys: {known})")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values as YAML scalars/lists) into a nested dict.

    ``a.b=3`` becomes ``{"a": {"b": 3}}``.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is both a value and a section")
        node[parts[-1]] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
