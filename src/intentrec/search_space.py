"""Hyper-parameter search spaces, declared on the config classes they search.

A config class lists the fields worth tuning and their ranges in a ``search_space`` class attribute::

    class NISERConfig(SRGNNConfig):
        search_space: ClassVar[SearchSpace] = {
            **SRGNNConfig.search_space,
            "dropout": FloatRange(low=0.0, high=0.5),
            "scale": FloatRange(low=4.0, high=32.0, log=True),
        }

Every entry is checked when the class is defined (``Config.__pydantic_init_subclass__``): the key
must be a field of the class, and both ends of a range (or every choice) must be valid values of that
field, so a typo or an out-of-range bound fails on import. ``intentrec tune`` prefixes the keys like
``--set`` does: ``model.<field>``, ``train.<field>``, ``method.<field>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from intentrec.config import Config
from intentrec.errors import ConfigError

Scalar = bool | int | float | str | None


class FloatRange(Config):
    """A float in ``[low, high]``; ``log`` samples uniformly in log space, ``step`` discretises."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_bounds(self.low, self.high, self.log, self.step)
        return self

    def values(self) -> tuple[Scalar, ...]:
        return (self.low, self.high)


class IntRange(Config):
    """An integer in ``[low, high]`` (both included)."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_bounds(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self

    def values(self) -> tuple[Scalar, ...]:
        return (self.low, self.high)


class Choice(Config):
    """One of ``choices`` (numbers, strings, booleans or null)."""

    type: Literal["categorical"] = "categorical"
    choices: tuple[Scalar, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices repeat a value: {list(self.choices)}")
        return self

    def values(self) -> tuple[Scalar, ...]:
        return self.choices


def _check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError("a range is either log or stepped, not both")


Param = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]
#: field name → range; on a config class, the fields it searches.
SearchSpace = Mapping[str, FloatRange | IntRange | Choice]

_PARAM = TypeAdapter(Param)


def parse_param(value: Any, *, where: str) -> FloatRange | IntRange | Choice:
    """A range from a YAML/JSON mapping like ``{type: float, low: 1.0e-4, high: 1.0e-2, log: true}``."""
    try:
        return _PARAM.validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(f"{_location(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(
            f"{where}: invalid range ({problems}); expected e.g. {{type: float, low: 0.0, high: 0.5}}, "
            "{type: int, low: 1, high: 3} or {type: categorical, choices: [50, 100]}"
        ) from None


def _location(loc: tuple[Any, ...]) -> str:
    if loc[:1] in (("float",), ("int",), ("categorical",)):
        loc = loc[1:]  # the union's tag: "float.high" → "high"
    return ".".join(map(str, loc)) or "value"


def check_space(cls: type[Config], space: Mapping[str, Any], *, where: str | None = None) -> None:
    """Every key of ``space`` is a field of ``cls`` and every bound/choice is a valid value of it."""
    where = where or f"{cls.__name__}.search_space"
    problems = []
    for name, param in space.items():
        if name not in cls.model_fields:
            known = ", ".join(sorted(cls.model_fields))
            problems.append(f"'{name}' is not a field of {cls.__name__} (fields: {known})")
            continue
        if not isinstance(param, FloatRange | IntRange | Choice):
            problems.append(f"'{name}': expected FloatRange, IntRange or Choice, got {type(param).__name__}")
            continue
        field = cls.model_fields[name]
        annotation = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        adapter = TypeAdapter(annotation)
        for value in param.values():
            try:
                # strict for ranges: a float range over an int field must fail even at integral ends
                adapter.validate_python(value, strict=not isinstance(param, Choice))
            except ValidationError as exc:
                problems.append(f"'{name}': {value!r} is not a valid value ({exc.errors()[0]['msg']})")
    if problems:
        raise ConfigError(f"invalid search space {where}:\n  " + "\n  ".join(problems))


def dump_param(param: FloatRange | IntRange | Choice) -> dict[str, Any]:
    """JSON-ready form, without defaults (what a space file would say)."""
    return {"type": param.type, **param.model_dump(mode="json", exclude={"type"}, exclude_defaults=True)}


def describe_param(param: FloatRange | IntRange | Choice) -> str:
    if isinstance(param, Choice):
        return "one of " + ", ".join(map(repr, param.choices))
    kind = "log " if param.log else ""
    step = f" step {param.step}" if (param.step or 1) != 1 else ""
    return f"{param.type} {kind}[{param.low}, {param.high}]{step}"
