"""MiaSRec: multi-intent-aware session-based recommendation (Choi et al., SIGIR 2024).

Following the authors' ``miasrec.py`` (RecBole): the session's most recent ``max_length`` clicks are
read newest first; a *mean token* (the mean of the session's item vectors) is put in front, so token 0
is the mean and token t ≥ 1 the t-th most recent click. Every token gets
``x_t = e_t + a_t + r_{f_t}`` (item vector, position vector, *frequency* vector of how often the item
occurs in the session, clipped at ``max_repeat``), LayerNorm and dropout, and a bidirectional post-LN
transformer (RecBole's ``TransformerEncoder``: GELU, ``num_layers`` blocks) gives ``c_t``. A highway
keeps each token's own item: ``h_t = g_t ⊙ e_t + (1 − g_t) ⊙ c_t`` with ``g_t = σ(W_h [e_t ; c_t])``.
Each ``h_t`` is one intent. Importance ``γ = entmax_α(w_iᵀ [h_0 ; h_t] + b)`` over the tokens selects
the intents (γ_t > 0); the selected ``z_t = normalise(γ_t h_t)`` score item v with the normalised
item table ``ṽ``: ``β max_t z_tᵀ ṽ / τ + (1 − β) mean_t z_tᵀ ṽ / τ``. In training the table goes
through dropout (``item_dropout``) before it is normalised, as in the code's ``calculate_loss``.

Deviations from the authors' code, on purpose: (1) the code calls ``entmax_bisect`` with
``config['entmax_alpha']``, which its configs never set, so it falls back to α = −1: a dense weighting
that never selects (no γ is 0). We use ``entmax_alpha`` = 1.5 (``entmax_bisect``'s own default, a
sparse α-entmax as the paper describes); α must lie in (1, 2]. (2) The code's max runs over all 50
padded positions, so padding tokens' outputs (and dropped intents, at score 0) enter it; we take the
max over the selected intents only. (3) The code marks the mean token with item id 1 when counting
repeats, so item 1 counts the mean token as one of its repeats; the mean token gets frequency 1 here
and items count only their own clicks. Since ``normalise(γ_t h_t) = normalise(h_t)``, γ only selects;
the importance layer gets no gradient beyond rounding in the code's model as in ours.

Vectors: ``local`` = ``h_1`` (the intent at the last click), ``global`` = ``h_0`` (the mean token's
intent, which attends to the whole session); ``session`` = ``Σ_t γ_t h_t``. The selected intents are
``extras["intents"]`` (``[B, T, d]``, unit length, zero where not selected) with
``extras["selected"]``; they are what the backbone scores. When a method replaces ``session``, the new
vector is scored the same way as a single intent.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.msgat import entmax
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.layers import keep_most_recent
from intentrec.models.registry import register_backbone


class MiaSRecConfig(BackboneConfig):
    embedding_dim: int = Field(100, ge=1)
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(2, ge=1)
    inner_size: int = Field(256, ge=1, description="feed-forward width")
    hidden_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    session_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the token item vectors")
    item_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the item table in training")
    temperature: float = Field(0.07, gt=0)
    beta: float = Field(0.9, ge=0.0, le=1.0, description="weight of the max over intents (paper: 0.7-0.9)")
    entmax_alpha: float = Field(1.5, gt=1.0, le=2.0, description="α of the intent selection")
    max_repeat: int = Field(2, ge=1, description="frequencies above this share one vector")
    max_length: int = Field(50, ge=1, description="most recent clicks read (RecBole's MAX_ITEM_LIST_LENGTH)")
    layer_norm_eps: float = Field(1e-12, gt=0)
    initializer_range: float = Field(0.02, gt=0)


class PostNormBlock(nn.Module):
    """RecBole's ``TransformerLayer``: ``LN(x + Drop(MHA(x)))`` then ``LN(y + Drop(W2 GELU(W1 y)))``."""

    def __init__(self, config: MiaSRecConfig):
        super().__init__()
        d = config.embedding_dim
        if d % config.num_heads:
            raise ValueError(f"embedding_dim {d} is not divisible by num_heads {config.num_heads}")
        self.heads = config.num_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attention_out = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.feed_in = nn.Linear(d, config.inner_size)
        self.feed_out = nn.Linear(config.inner_size, d)
        self.feed_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.attention_dropout = config.attention_dropout

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, width, d = tokens.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, width, self.heads, d // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(tokens)),
            split(self.key(tokens)),
            split(self.value(tokens)),
            attn_mask=mask.view(batch, 1, 1, width),
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).reshape(batch, width, d)
        tokens = self.attention_norm(tokens + self.dropout(self.attention_out(attended)))
        return self.feed_norm(tokens + self.dropout(self.feed_out(F.gelu(self.feed_in(tokens)))))


def newest_first(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Right-padded rows reversed within their length: column 0 is the last click."""
    steps = torch.arange(items.shape[1], device=items.device).unsqueeze(0)
    index = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0)
    return items.gather(1, index).masked_fill(steps >= lengths.unsqueeze(1), 0)


@register_backbone("miasrec")
class MiaSRec(Backbone):
    """``local`` = intent at the last click, ``global`` = the mean token's intent, ``session`` = Σ γ_t h_t."""

    Config: ClassVar[type[BackboneConfig]] = MiaSRecConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The authors' RecBole run: Adam lr 1e-3, batch 1024, no weight decay or schedule, early stop after 5.
    default_train: ClassVar[dict] = {
        "lr": 0.001,
        "batch_size": 1024,
        "l2": 0.0,
        "lr_decay_step": 0,
        "lr_decay_gamma": 1.0,
        "patience": 5,
    }

    def __init__(self, num_items: int, config: MiaSRecConfig):
        super().__init__(num_items, config)
        self.config: MiaSRecConfig
        d = config.embedding_dim
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.positions = nn.Embedding(config.max_length + 1, d)  # + 1: the mean token
        self.frequencies = nn.Embedding(config.max_repeat + 1, d, padding_idx=0)
        self.input_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        self.session_dropout = nn.Dropout(config.session_dropout)
        self.item_dropout = nn.Dropout(config.item_dropout)
        self.blocks = nn.ModuleList(PostNormBlock(config) for _ in range(config.num_layers))
        self.highway = nn.Linear(2 * d, d)
        self.importance = nn.Linear(2 * d, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.config
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.dim)
            self.id_table.uniform_(-bound, bound)
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    module.weight.normal_(0.0, cfg.initializer_range)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
                if isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            self.frequencies.weight[0].zero_()

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        if vectors is None:
            return self.item_table()
        return F.normalize(self.item_dropout(vectors), dim=-1)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        cfg = self.config
        items, lengths = keep_most_recent(batch.items, batch.lengths, cfg.max_length)
        recent = newest_first(items, lengths)  # [B, L]
        clicks = recent > 0
        vectors = self.embed_items(recent)
        mean = vectors.sum(1) / lengths.clamp(min=1).unsqueeze(1).to(vectors.dtype)
        tokens = self.session_dropout(torch.cat([mean.unsqueeze(1), vectors], dim=1))  # [B, L + 1, d]
        mask = F.pad(clicks, (1, 0), value=True)
        repeats = ((recent.unsqueeze(1) == recent.unsqueeze(2)) & clicks.unsqueeze(1)).sum(-1)
        repeats = F.pad(repeats.masked_fill(~clicks, 0), (1, 0), value=1).clamp(max=cfg.max_repeat)
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        inputs = tokens + self.positions(steps).unsqueeze(0) + self.frequencies(repeats)
        hidden = self.input_dropout(self.input_norm(inputs))
        for block in self.blocks:
            hidden = block(hidden, mask)
        gate = torch.sigmoid(self.highway(torch.cat([tokens, hidden], dim=-1)))
        intents = gate * tokens + (1 - gate) * hidden  # [B, T, d]
        paired = torch.cat([intents[:, :1].expand_as(intents), intents], dim=-1)
        importance = self.importance(paired).squeeze(-1).masked_fill(~mask, float("-inf"))
        gamma = entmax(importance, importance.new_full((importance.shape[0], 1), cfg.entmax_alpha))
        selected = gamma > 0
        session = (gamma.unsqueeze(-1) * intents).sum(1)
        return BackboneOutput(
            session=session,
            vectors={"local": intents[:, 1], "global": intents[:, 0]},
            # ``intent_session`` is the session tensor itself: a method that replaces ``session`` is seen
            # by identity and scored as one intent.
            extras={
                "intents": F.normalize(gamma.unsqueeze(-1) * intents, dim=-1),
                "selected": selected,
                "intent_session": session,
            },
        )

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        """``β max + (1 − β) mean`` of the selected intents' cosines / τ (a method's vector: one intent)."""
        cfg = self.config
        if output.session is output.extras["intent_session"]:
            intents, selected = output.extras["intents"], output.extras["selected"]
        else:
            intents = F.normalize(output.session, dim=-1).unsqueeze(1)
            selected = torch.ones(intents.shape[:2], dtype=torch.bool, device=intents.device)
        # Only the selected intents are scored (packed row by row): [S, n] rather than [B, T, n].
        rows, tokens = selected.nonzero(as_tuple=True)
        counts = selected.sum(1)
        logits = (intents[rows, tokens] @ table.t()) / cfg.temperature  # [S, n]
        best = torch.segment_reduce(logits, "max", lengths=counts, axis=0)
        # The mean of cosines is the cosine against the mean intent (linear), no [S, n] reduction needed.
        mean_intent = (intents * selected.unsqueeze(-1)).sum(1) / counts.unsqueeze(1).to(intents.dtype)
        mean = (mean_intent @ table.t()) / cfg.temperature
        return cfg.beta * best + (1 - cfg.beta) * mean
