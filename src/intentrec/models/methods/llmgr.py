"""LLMGR (Guo et al., arXiv 2402.16539): a causal LM reads a session through projected ID vectors.

The ID side is a trained intentrec backbone run (``id_run``: GC-SAN by default in the grids; any
backbone run works). Its item table is frozen; its other layers are frozen too unless
``train_id_layers``. Its vectors enter the LM's token-embedding space through ``h_v = W_p e_v``
(``W_p`` without bias, so padding stays zero):

    prompt = text tokens + one projected token per session item (the last ``max_items``)
             + one projected token each for the backbone's ``global`` and ``local`` vectors
             (+ each item's title tokens with ``with_titles``), placed where the template names them
    h      = the LM's last hidden state at the prompt's last token (LoRA on q/k/v/o)
    scores = Linear(h → n) (``head=linear``), or (W_o h)·(W_p E)ᵀ (``head=item``: ranks items
             added to the table after training)

Training is one ``intentrec train``: a stage-1 phase (node–text alignment: the prompt holds an
item's title, the target is that item, ``stage1_epochs``) runs before the main epochs (stage 2,
next-item prediction, ``train.epochs``), with one AdamW and one warm-up + cosine schedule over both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import ExampleSet
from intentrec.errors import ConfigError, DataError
from intentrec.io import sha256_file
from intentrec.models.base import Backbone, BackboneOutput, TrainingPhase, TrainingPlan
from intentrec.models.methods.base import Method, MethodConfig
from intentrec.models.methods.llmgr_lm import add_lora, load_lm
from intentrec.models.methods.llmgr_prompts import prompt_set, split_template
from intentrec.models.methods.registry import register_method

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset
    from intentrec.training.config import TrainerConfig

ALIGN_PHASE = "stage1-alignment"


class LLMGRConfig(MethodConfig):
    id_run: str | None = Field(
        None, description="run folder of the trained backbone (same --model and model.*); None: its random init"
    )
    lm: str = Field("smollm2", description="causal LM: a shipped name (smollm2, qwen0.5b), a .gguf path or hf:PATH")
    lm_init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: the LM's architecture with re-initialised weights (control)"
    )
    lm_init_seed: int = 0
    prompts: str = Field("v1", description="prompt template version (llmgr_prompts.PROMPTS)")
    with_titles: bool = Field(False, description="stage 2: each session item's title tokens follow its node token")
    max_items: int = Field(20, ge=1, description="node tokens for the last N items of the session")
    title_tokens: int = Field(24, ge=1, description="a title is cut to this many tokens")
    head: Literal["linear", "item"] = Field("linear", description="linear: Linear(h→n); item: (W_o h)·(W_p E)ᵀ")
    stage1: bool = Field(True, description="run the node–text alignment stage (false: the paper's ablation)")
    stage1_epochs: int = Field(1, ge=1)
    train_id_layers: bool = Field(False, description="train the ID model's layers except its item table")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_init: Literal["standard", "random"] = Field(
        "standard", description="standard: LoRA's B = 0; random: both matrices random (tests)"
    )
    lr_lora: float = Field(2e-4, gt=0)
    lr_head: float = Field(1e-3, gt=0, description="W_p, the head (and W_o)")
    lr_id: float = Field(1e-4, gt=0, description="the ID model's layers, with train_id_layers")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup: float = Field(0.05, ge=0, lt=1, description="warm-up fraction of all optimiser steps, then cosine to 0")
    accumulate: int = Field(2, ge=1, description="batches per optimiser step (gradient accumulation)")
    cuda_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="autocast dtype of the LM on CUDA")
    train_sample: int | None = Field(None, ge=1, description="stage 2 trains on a seeded sample of N train examples")
    sample_seed: int = Field(0, description="seed of train_sample (valid/test samples: train.eval_sample_seed)")

    @model_validator(mode="before")
    @classmethod
    def _moved_eval_sample(cls, values: Any) -> Any:
        if isinstance(values, dict) and "eval_sample" in values:
            raise ValueError(
                "method.eval_sample moved to train.eval_sample (its seed: train.eval_sample_seed), one "
                "sample for every model; for a run folder made before, move 'eval_sample' from config.json's "
                "method.config to its trainer section and add trainer.eval_sample_seed = method.config.sample_seed"
            )
        return values


def _left_pack(codes: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid positions to the right end, in order: (codes, mask) ``[B, M]``."""
    lengths = valid.sum(1)
    width = max(int(lengths.max()), 1)
    dest = (width - lengths).unsqueeze(1) + valid.long().cumsum(1) - 1
    rows = torch.arange(codes.shape[0], device=codes.device).unsqueeze(1).expand_as(codes)
    out = codes.new_zeros((codes.shape[0], width))
    mask = torch.zeros((codes.shape[0], width), dtype=torch.bool, device=codes.device)
    out[rows[valid], dest[valid]] = codes[valid]
    mask[rows[valid], dest[valid]] = True
    return out, mask


@register_method("llmgr")
class LLMGR(Method):
    Config: ClassVar[type[MethodConfig]] = LLMGRConfig
    projects_text = False
    default_train: ClassVar[dict] = {"batch_size": 16, "epochs": 3, "eval_batch_size": 64}

    def __init__(self, backbone: Backbone, config: LLMGRConfig):
        super().__init__(backbone, config)
        self.prompt_set = prompt_set(config.prompts)
        loaded = load_lm(config.lm, init=config.lm_init, seed=config.lm_init_seed)
        self.lm = loaded.decoder
        self.tokenizer = loaded.tokenizer
        self.lm_identity = dict(loaded.identity)
        self.hidden_size = loaded.hidden_size
        self.lora_parameters = add_lora(
            self.lm,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            targets=config.lora_targets,
            init=config.lora_init,
        )
        self.w_p = nn.Linear(backbone.dim, self.hidden_size, bias=False)
        if config.head == "linear":
            self.head = nn.Linear(self.hidden_size, backbone.num_items)
        else:
            self.w_o = nn.Linear(self.hidden_size, self.hidden_size)
        backbone.requires_grad_(False)
        if config.train_id_layers:
            table = backbone.id_item_table().untyped_storage().data_ptr()
            for param in backbone.parameters():
                param.requires_grad_(param.untyped_storage().data_ptr() != table)
        self._tokenise_templates()
        self.register_buffer("_title_ids", torch.zeros((backbone.num_items + 1, 0), dtype=torch.long), persistent=False)
        self.register_buffer("_title_len", torch.zeros(backbone.num_items + 1, dtype=torch.long), persistent=False)
        self.titles_loaded = False
        self.id_identity: dict[str, str] | None = None
        self.align_examples: ExampleSet | None = None
        self.train_size = 0

    # ------------------------------------------------------------------ prompts
    def _tokenise_templates(self) -> None:
        """Token ids of every fixed text piece, once (buffers, so they follow the model's device)."""
        prompts = self.prompt_set
        self.next_parts = split_template(prompts.next_item, ("global", "local", "items"), "prompt next_item")
        self.item_parts = split_template(prompts.item, ("node", "title"), "prompt item")
        self.align_parts = split_template(prompts.align, ("title",), "prompt align")
        for tag, parts in (("next", self.next_parts), ("item", self.item_parts), ("align", self.align_parts)):
            for i, (kind, text) in enumerate(parts):
                if kind == "text":
                    first = i == 0 and tag != "item"
                    ids = self.tokenizer.encode([text], first=first)[0]
                    self.register_buffer(f"_tpl_{tag}_{i}", torch.tensor(ids, dtype=torch.long), persistent=False)
        sep = self.tokenizer.encode([prompts.separator])[0] if prompts.separator else []
        self.register_buffer("_tpl_sep", torch.tensor(sep, dtype=torch.long), persistent=False)

    def _text(self, tag: str, i: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids: torch.Tensor = getattr(self, f"_tpl_{tag}_{i}")
        codes = ids.unsqueeze(0).expand(rows, -1)
        return codes, torch.ones_like(codes, dtype=torch.bool)

    def _titles_of(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Title token ids ``[..., T]`` of item indices and which are real."""
        if not self.titles_loaded:
            raise DataError("llmgr: the item titles are not loaded; call prepare(dataset) first")
        ids = self._title_ids[items]
        width = ids.shape[-1]
        valid = torch.arange(width, device=ids.device) < self._title_len[items].unsqueeze(-1)
        return ids, valid

    def _item_chunks(self, items: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[B, K*C]`` of the ``{items}`` slot: per item the separator (not before the first
        real item), then its ``item`` template; node j is code ``-(3 + j)``."""
        b, k = items.shape
        real = items > 0
        sep = self._tpl_sep.view(1, 1, -1).expand(b, k, -1)
        slot = torch.arange(k, device=items.device)
        sep_valid = (real & (slot.unsqueeze(0) != first.unsqueeze(1))).unsqueeze(-1).expand_as(sep)
        codes, valid = [sep], [sep_valid]
        for i, (kind, name) in enumerate(self.item_parts):
            if kind == "text":
                ids = getattr(self, f"_tpl_item_{i}").view(1, 1, -1).expand(b, k, -1)
                codes.append(ids)
                valid.append(real.unsqueeze(-1).expand_as(ids))
            elif name == "node":
                codes.append((-(3 + slot)).view(1, k, 1).expand(b, k, 1))
                valid.append(real.unsqueeze(-1))
            elif self.config.with_titles:
                ids, ok = self._titles_of(items)
                codes.append(ids)
                valid.append(ok & real.unsqueeze(-1))
        return torch.cat(codes, 2).reshape(b, -1), torch.cat(valid, 2).reshape(b, -1)

    def session_prompt(self, batch: SessionBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage-2 prompt codes and mask ``[B, M]`` (left-padded; code ≥ 0: a token id, code −1 − s:
        node slot s) and the item indices ``[B, K]`` of the node slots 2.. (slot 0: global, 1: local)."""
        k = min(self.config.max_items, batch.items.shape[1])
        lengths = batch.lengths.to(batch.items.device)
        index = lengths.unsqueeze(1) - k + torch.arange(k, device=lengths.device)
        items = batch.items.gather(1, index.clamp(min=0)) * (index >= 0)
        first = k - lengths.clamp(max=k)
        codes, valid = [], []
        rows = batch.size
        for i, (kind, name) in enumerate(self.next_parts):
            if kind == "text":
                c, v = self._text("next", i, rows)
            elif name == "items":
                c, v = self._item_chunks(items, first)
            else:
                c = torch.full((rows, 1), -1 if name == "global" else -2, dtype=torch.long, device=items.device)
                v = torch.ones_like(c, dtype=torch.bool)
            codes.append(c)
            valid.append(v)
        packed, mask = _left_pack(torch.cat(codes, 1), torch.cat(valid, 1))
        return packed, mask, items

    def align_prompt(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 prompt codes and mask of item indices ``[B]`` (their titles; no node token)."""
        codes, valid = [], []
        for i, (kind, _) in enumerate(self.align_parts):
            if kind == "text":
                c, v = self._text("align", i, items.shape[0])
            else:
                c, v = self._titles_of(items)
            codes.append(c)
            valid.append(v)
        return _left_pack(torch.cat(codes, 1), torch.cat(valid, 1))

    # ------------------------------------------------------------------ the LM
    def hybrid_embeddings(self, codes: torch.Tensor, mask: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[B, M, h]``: token embeddings where code ≥ 0, ``nodes[:, −1 − code]`` elsewhere."""
        tokens = self.lm.get_input_embeddings()(codes.clamp(min=0))
        slot = (-1 - codes).clamp(min=0, max=nodes.shape[1] - 1)
        placed = nodes.to(tokens.dtype).gather(1, slot.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        embedded = torch.where((codes < 0).unsqueeze(-1), placed, tokens)
        return embedded * mask.unsqueeze(-1).to(embedded.dtype)

    def last_hidden(self, codes: torch.Tensor, mask: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """The LM's last hidden state at each prompt's last token ``[B, h]`` (float32)."""
        embedded = self.hybrid_embeddings(codes, mask, nodes)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # padding never shifts a real token
        bf16 = embedded.device.type == "cuda" and self.config.cuda_dtype == "bfloat16"
        with torch.autocast(device_type=embedded.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.lm(inputs_embeds=embedded, attention_mask=mask.long(), position_ids=positions, use_cache=False)
        return out.last_hidden_state[:, -1].float()

    # ------------------------------------------------------------------ model interface
    @property
    def dim(self) -> int:
        return self.hidden_size

    def embed_items(self, indices: torch.Tensor) -> torch.Tensor:
        return self.w_p(self.backbone.embed_items(indices))

    def item_table(self) -> torch.Tensor:
        """``W_p E``: the items in the LM's token-embedding space ``[n, h]``."""
        return self.w_p(self.backbone.item_vectors())

    def fuse(self, output: BackboneOutput, batch: SessionBatch) -> tuple[BackboneOutput, dict[str, torch.Tensor]]:
        codes, mask, items = self.session_prompt(batch)
        graph = torch.stack([self.vector(output, "global", batch), self.vector(output, "local", batch)], 1)
        nodes = torch.cat([self.w_p(graph), self.embed_items(items)], 1)
        return BackboneOutput(session=self.last_hidden(codes, mask, nodes)), {}

    def score(self, output: BackboneOutput) -> torch.Tensor:
        if self.config.head == "linear":
            return self.head(output.session)
        return self.score_with(output, self.item_table())

    def new_items_problem(self) -> str | None:
        if self.config.head == "linear":
            return "its linear head has one output per trained item (method.head=item scores any item table)"
        return None

    def scoring_table(self) -> torch.Tensor:
        return self.item_table()

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        if self.config.head == "linear":
            raise ConfigError(f"llmgr cannot score against another item table: {self.new_items_problem()}")
        return F.linear(self.w_o(output.session), table)

    def alignment_loss(self, batch: SessionBatch) -> torch.Tensor:
        """Stage 1: the title prompt of each item, cross-entropy over all items against that item."""
        if batch.targets is None:
            raise ValueError("alignment_loss() needs a batch with targets")
        codes, mask = self.align_prompt(batch.items[:, 0])
        nodes = torch.zeros((batch.size, 1, self.hidden_size), device=codes.device)
        return F.cross_entropy(self.score(BackboneOutput(session=self.last_hidden(codes, mask, nodes))), batch.targets)

    def train(self, mode: bool = True) -> LLMGR:
        super().train(mode)
        if not self.config.train_id_layers:
            self.backbone.eval()  # a frozen ID model runs as it was trained to predict (no dropout)
        return self

    # ------------------------------------------------------------------ needs
    def feature_names(self) -> tuple[str, ...]:
        return ()

    def serving_problem(self) -> str | None:
        if self.config.with_titles and not self.titles_loaded:
            return "the item titles are not loaded (call prepare(dataset))"
        return None

    # ------------------------------------------------------------------ data
    def prepare(self, dataset: PreparedDataset) -> None:
        super().prepare(dataset)
        if self.config.id_run is not None:
            self._load_id_run(dataset)
        self._load_titles(dataset)

    def _load_id_run(self, dataset: PreparedDataset) -> None:
        from intentrec.data.identity import DatasetIdentity

        folder = Path(self.config.id_run)
        config_file, weights = folder / "config.json", folder / "best.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise ConfigError(f"method.id_run: {folder} is not a trained run folder (config.json, best.safetensors)")
        record = json.loads(config_file.read_text(encoding="utf-8"))
        if record.get("method"):
            raise ConfigError(f"method.id_run: {folder} is a '{record['method']['name']}' run; give a backbone run")
        name = record["model"]["name"]
        if name != self.backbone.registry_name:
            raise ConfigError(
                f"method.id_run: {folder} trained '{name}' but this run's --model is '{self.backbone.registry_name}'"
            )
        theirs = type(self.backbone.config).build(record["model"]["config"]).model_dump(mode="json")
        ours = self.backbone.config.model_dump(mode="json")
        differ = [f"model.{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in ours if theirs.get(k) != ours[k]]
        if differ:
            raise ConfigError(f"method.id_run: {folder} was trained with other backbone settings: " + "; ".join(differ))
        if not DatasetIdentity.of(dataset.path).matches(record["dataset"]):
            raise DataError("method.id_run: that run was trained on another dataset", path=folder)
        try:
            self.backbone.load_state_dict(load_file(str(weights), device=str(self._device())))
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise DataError(f"method.id_run: weights do not fit the backbone: {first}", path=weights) from None
        self.id_identity = {"run": folder.name, "model": name, "sha256": sha256_file(weights)}

    def _load_titles(self, dataset: PreparedDataset) -> None:
        titles = dataset.titles()
        texts = [" " + t.strip() if t and t.strip() else "" for t in titles]
        encoded = self.tokenizer.encode(texts)
        width = min(self.config.title_tokens, max((len(e) for e in encoded), default=0))
        ids = np.zeros((len(texts) + 1, width), dtype=np.int64)
        lengths = np.zeros(len(texts) + 1, dtype=np.int64)
        for row, tokens in enumerate(encoded, start=1):
            tokens = tokens[:width]
            ids[row, : len(tokens)] = tokens
            lengths[row] = len(tokens)
        device = self._device()
        self._title_ids = torch.from_numpy(ids).to(device)
        self._title_len = torch.from_numpy(lengths).to(device)
        self.titles_loaded = True
        titled = np.flatnonzero(lengths[1:] > 0) + 1
        self.align_examples = ExampleSet(
            "alignment",
            titled.astype(np.int64),
            titled.astype(np.int32),
            np.arange(len(titled) + 1, dtype=np.int64),
            titled.astype(np.int32),
        )

    def select_examples(self, examples: ExampleSet) -> ExampleSet:
        cfg: LLMGRConfig = self.config
        if examples.split == "train":
            if cfg.train_sample is not None:
                from intentrec.semantic.infer import select_rows

                rows = select_rows(len(examples), limit=None, sample=cfg.train_sample, seed=cfg.sample_seed)
                examples = examples.subset(rows)
            self.train_size = len(examples)
        return examples

    def training_phases(self) -> tuple[TrainingPhase, ...]:
        cfg: LLMGRConfig = self.config
        if not cfg.stage1:
            return ()
        if self.align_examples is None or len(self.align_examples) == 0:
            raise DataError("llmgr stage 1 needs item titles and the dataset has none; set method.stage1=false")
        return (TrainingPhase(ALIGN_PHASE, cfg.stage1_epochs, self.align_examples, self.alignment_loss),)

    # ------------------------------------------------------------------ training
    def param_groups(self, cfg: TrainerConfig) -> list[dict[str, Any]]:
        method: LLMGRConfig = self.config
        groups: dict[str, list[nn.Parameter]] = {"lora": [], "head": [], "id": []}
        for name, param in self.named_parameters():
            if param.requires_grad:
                kind = "lora" if name.startswith("lm.") else "id" if name.startswith("backbone.") else "head"
                groups[kind].append(param)
        lrs = {"lora": method.lr_lora, "head": method.lr_head, "id": method.lr_id}
        return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]

    def training_plan(self, cfg: TrainerConfig, device: torch.device) -> TrainingPlan:
        method: LLMGRConfig = self.config
        optimizer = torch.optim.AdamW(self.param_groups(cfg), weight_decay=method.weight_decay)

        def steps(examples: int, epochs: int) -> int:
            return math.ceil(math.ceil(max(examples, 1) / cfg.batch_size) / method.accumulate) * epochs

        total = steps(self.train_size, cfg.epochs)
        if method.stage1 and self.align_examples is not None:  # not prepared (no titles): no stage-1 steps
            total += steps(len(self.align_examples), method.stage1_epochs)
        warm = round(method.warmup * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return TrainingPlan(optimizer, scheduler, accumulate=method.accumulate, scheduler_interval="step")

    # ------------------------------------------------------------------ checkpoints
    def frozen_pretrained(self) -> dict[str, dict[str, str]]:
        frozen = {"lm.": dict(self.lm_identity)}
        if self.config.id_run is not None:
            if self.id_identity is None:
                weights = Path(self.config.id_run) / "best.safetensors"
                self.id_identity = {"run": Path(self.config.id_run).name, "sha256": sha256_file(weights)}
            frozen["backbone."] = dict(self.id_identity)
        return frozen

    def _frozen_key(self, key: str) -> bool:
        return key.startswith("lm.") or (self.config.id_run is not None and key.startswith("backbone."))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """LoRA, W_p, the head, unfrozen ID layers; and the ID model itself when it is no trained run."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable or not self._frozen_key(k)}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = set(self.checkpoint_state())
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        self.load_state_dict(tensors, strict=False)

    def run_info(self) -> dict[str, Any]:
        cfg: LLMGRConfig = self.config
        return {
            **super().run_info(),
            "lm": self.lm_identity,
            "id_run": self.id_identity,
            "prompts": cfg.prompts,
            "with_titles": cfg.with_titles,
            "head": cfg.head,
            "stage1": cfg.stage1,
            "lora_parameters": self.lora_parameters,
            "train_sample": cfg.train_sample,
            "sample_seed": cfg.sample_seed,
        }
