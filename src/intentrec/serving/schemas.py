"""Request and response bodies of the HTTP service (the OpenAPI schema at /docs is built from these)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def _unicode(value: str) -> str:
    # JSON may spell lone surrogates (\ud800); they cannot be stored or sent back as UTF-8
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogate code points)") from None
    return value


def _text(max_length: int, min_length: int = 0) -> object:
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_unicode)]


ItemId = _text(256, 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def recommend_request_model(max_session: int, max_k: int, models: list[str]) -> type[BaseModel]:
    """The request body, with this server's limits and model names in its schema."""
    names = Enum("ModelName", {name: name for name in models}, type=str)  # type: ignore[misc]

    class RecommendRequest(_Body):
        session: list[ItemId] = Field(  # type: ignore[valid-type]
            ..., min_length=1, max_length=max_session, description="clicked item ids, oldest first"
        )
        k: int = Field(10, ge=1, le=max_k, description="how many items to return (at most the catalogue)")
        exclude_seen: bool = Field(False, description="never recommend an item of the session")
        strict: bool = Field(False, description="reject (422) a session with unknown item ids instead of ignoring them")
        model: names | None = Field(None, description="which served run ranks (default: the first)")  # type: ignore[valid-type]

    return RecommendRequest


class ScoredItem(BaseModel):
    item_id: str
    title: str | None
    score: float


class RecommendResponse(BaseModel):
    model: str
    items: list[ScoredItem]
    unknown: list[str] = Field(description="session ids that are not in the catalogue (ignored)")
    not_in_model: list[str] = Field(
        description="session ids of items added after training: ranked, excluded if asked, but not model input"
    )


class ItemIn(_Body):
    item_id: ItemId  # type: ignore[valid-type]
    title: _text(2000, 1)  # type: ignore[valid-type]
    description: _text(10_000) | None = None  # type: ignore[valid-type]
    categories: list[_text(200)] = Field(default_factory=list, max_length=50)  # type: ignore[valid-type]


class ItemOut(BaseModel):
    item_id: str
    title: str | None
    description: str | None = None
    categories: list[str] = Field(default_factory=list)
    source: Literal["catalogue", "added"]


class ErrorOut(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    models: list[str] = Field(default_factory=list)
    items: int = 0
    reasons: list[str] = Field(default_factory=list)
