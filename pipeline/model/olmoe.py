"""OLMoE language model with optional Over-Encoding (input) and Over-Decoding (output).

nanoGPT-style: embed -> n_layers pre-norm blocks -> final RMSNorm -> untied V-way head. The model knows
nothing about distributed training; see docs/model.md for the parallelism hooks (OE `lookup`, stacked
expert weights, parameter names).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config.model import ModelConfig
from pipeline.model.attention import document_attention_mask
from pipeline.model.block import Block
from pipeline.model.init import InitSpec, Shard, draw_seed, init_module, materialize
from pipeline.model.kv_cache import DecodeCache
from pipeline.model.linear_cross_entropy import IGNORE, OutputHead, cross_entropy
from pipeline.model.moe import RouterStats
from pipeline.model.norms import RMSNorm
from pipeline.model.over_decoding import MTPModule, ProductHead, shift_labels, shift_left
from pipeline.model.over_encoding import OverEncoding
from pipeline.model.rope import RotaryEmbedding


@dataclass
class ModelOutput:
    loss: torch.Tensor                                   # scalar total (weights applied), differentiable
    losses: dict[str, torch.Tensor] = field(default_factory=dict)   # detached scalars
    stats: dict[str, torch.Tensor] = field(default_factory=dict)    # detached monitoring tensors


def labels_from_inputs(input_ids: torch.Tensor, doc_starts: torch.Tensor | None = None) -> torch.Tensor:
    """labels[i] = input_ids[i+1], or -100 when token i+1 starts a new document or does not exist."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    if doc_starts is not None:
        labels[:, :-1] = labels[:, :-1].masked_fill(doc_starts[:, 1:], IGNORE)
    return labels


def aux_loss_groups(router: list, n_layers: int, mode: str) -> dict[str, list]:
    """Router stats (trunk layers first, then the MTP modules) -> {loss-name suffix: the routers one lb / z
    mean covers}, per model.mtp_aux_loss: pooled {"": all}, trunk_only {"": trunk}, separate {"": trunk,
    "_mtp": MTP modules}. Without MTP routers every mode is {"": trunk}."""
    trunk, mtp = router[:n_layers], router[n_layers:]
    if mode == "pooled" or not mtp:
        return {"": router}
    if mode == "trunk_only":
        return {"": trunk}
    return {"": trunk, "_mtp": mtp}


class OLMoE(nn.Module):
    def __init__(self, cfg: ModelConfig, init_seed: int | None = None):
        """Built on the meta device, then materialised on the current default device (`with torch.device(d)`)
        and initialised in bounded blocks (pipeline/model/init.py); under the meta device it stays a skeleton.
        `init_seed` fixes the initial values; by default it is drawn from torch's global generator."""
        super().__init__()
        self.cfg = cfg
        self.init_seed = draw_seed() if init_seed is None else int(init_seed)
        device = torch.get_default_device()
        with torch.device("meta"):   # no full-size temporaries: module constructors' own inits do nothing
            self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
            oe = cfg.over_encoding
            self.over_encoding = OverEncoding(oe, cfg.d_model, cfg.vocab_size, cfg.norm_eps) if oe.enabled else None
            self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.lm_head = OutputHead(cfg.d_model, cfg.padded_vocab_size, bias=False)   # nn.Linear + chunked loss
            od = cfg.over_decoding
            self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(od.depth)) if od.mode == "mtp" else None
            self.od_heads = (nn.ModuleList(ProductHead(cfg.d_model, od.head_dim, cfg.padded_vocab_size)
                                           for _ in range(od.n - 1)) if od.mode == "product" else None)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        if device.type != "meta":
            materialize(self, device)
            self.init_weights()

    @property
    def num_moe_layers(self) -> int:
        """Rows of stats['expert_counts']: trunk layers, then one per MTP module."""
        return (self.cfg.n_layers + (len(self.mtp) if self.mtp is not None else 0)) if self.cfg.is_moe else 0

    def init_spec(self, name: str, param: torch.Tensor) -> InitSpec:
        """OLMoE init: every matrix (embeddings, projections, router, stacked experts, heads) N(0, init_std)
        truncated at 3 std; 1-D parameters are exactly the norm weights: 1; OE tables N(0, oe.init_std)."""
        if name == "over_encoding.table":
            return InitSpec("trunc_normal", self.cfg.over_encoding.init_std)
        if param.dim() == 1:
            return InitSpec("ones")
        return InitSpec("trunc_normal", self.cfg.init_std)

    @torch.no_grad()
    def init_weights(self, shard_of: Callable[[torch.Tensor], Shard | None] | None = None) -> None:
        """(Re-)initialise every parameter from (init_seed, name, element position) and recompute buffers, so
        a model built on the meta device can be materialised with to_empty(). `shard_of(param)` says which part
        of the full parameter a swapped-in parallel module holds (its values are those of the same positions
        of the single-process model)."""
        init_module(self, self.init_spec, self.init_seed, shard_of)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        if self.over_encoding is not None:
            self.over_encoding.reset_buffers()

    def embed_inputs(self, input_ids: torch.Tensor, doc_starts: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input embedding [B, S, D] (1-gram, or the OE mean) and the OE table ids [T, B, S] (or None)."""
        emb = self.embed(input_ids)
        if self.over_encoding is None:
            return emb, None
        return self.over_encoding(emb, input_ids, doc_starts)

    def forward_hidden(self, input_ids: torch.Tensor, doc_starts: torch.Tensor | None = None):
        """Trunk pass: (pre-norm hidden [B,S,D], input embedding, OE ids, router stats, rope, attention mask)."""
        emb, oe_ids = self.embed_inputs(input_ids, doc_starts)
        mask = document_attention_mask(doc_starts) if self.cfg.doc_mask else None
        rope = self.rope(input_ids.shape[1], emb.device, emb.dtype)
        h, router = emb, []
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:   # non-reentrant: any outputs (RouterStats), routing is recomputed identically
                h, stats = checkpoint(layer, h, rope, mask, use_reentrant=False)
            else:
                h, stats = layer(h, rope, mask)
            router.append(stats)
        return h, emb, oe_ids, router, rope, mask

    def logits(self, input_ids: torch.Tensor, doc_starts: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits [B, S, padded_V] (evaluation / generation)."""
        h = self.forward_hidden(input_ids, doc_starts)[0]
        return self.lm_head(self.norm(h))

    def new_decode_cache(self, batch: int, capacity: int) -> DecodeCache:
        """Empty decoding state (KV cache + OE n-gram id cache) for `batch` rows of up to `capacity` tokens."""
        oe = self.cfg.over_encoding
        return DecodeCache(batch, capacity, self.cfg.n_layers, oe.n - 1 if oe.enabled else 0,
                           self.lm_head.weight.device)

    def decode(self, input_ids: torch.Tensor, cache: DecodeCache, valid: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        """Incremental trunk pass over the s new tokens [B, s] (a prompt, then one token at a time): next-token
        logits [B, s, padded_V], or [B, 1, padded_V] of the last position with `last_only` (a prompt's prefill:
        the head over all s positions is s times the GEMM, 4 % of a d512 generation). Rows are single documents;
        `valid` [B, s] marks real tokens when prompts are left-padded with id 0 (pads never reach a real token:
        see kv_cache.py). MTP modules are not run."""
        h = self.decode_hidden(input_ids, cache, valid)
        return self.lm_head(self.norm(h[:, -1:] if last_only else h))

    def decode_hidden(self, input_ids: torch.Tensor, cache: DecodeCache, valid: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """`decode` without the final norm and head: the trunk output h^0 [B, s, D] that MTP modules read
        (speculative decoding drafts from it, pipeline/generate/speculative.py)."""
        s = input_ids.shape[1]
        cache.set_valid(valid if valid is not None else torch.ones_like(input_ids, dtype=torch.bool))
        emb = self.embed(input_ids)
        if self.over_encoding is not None:
            emb, cache.ngram_history = self.over_encoding.forward_incremental(emb, input_ids, cache.ngram_history)
        h = emb
        rope = self.cache_rope(cache, emb)
        for layer, layer_cache in zip(self.layers, cache.layers):
            h, _ = layer(h, rope, None, layer_cache)
        cache.advance(s)
        return h

    def cache_rope(self, cache: DecodeCache, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos / sin [B, 1, s, head_dim] at the per-row positions of the chunk just marked in `cache` (one
        table of the cache's capacity, so it is computed once per generation)."""
        cos, sin = self.rope(cache.capacity, x.device, x.dtype)
        return cos[cache.positions].unsqueeze(1), sin[cache.positions].unsqueeze(1)

    def decode_mtp(self, depth: int, h_prev: torch.Tensor, emb_next: torch.Tensor, cache: DecodeCache,
                   valid: torch.Tensor) -> torch.Tensor:
        """Incremental MTP depth `depth` (1-based) over s positions: h^{depth-1} [B, s, D] and the input
        embedding of the tokens `depth` positions ahead [B, s, D] -> h^depth [B, s, D] (pre-norm), with the
        depth's own one-layer KV cache (speculative drafting, pipeline/generate/speculative.py)."""
        cache.set_valid(valid)
        h, _ = self.mtp[depth - 1](h_prev, emb_next, self.cache_rope(cache, h_prev), None, cache.layers[0])
        cache.advance(h_prev.shape[1])
        return h

    def mtp_norm(self, depth: int) -> nn.Module:
        """The norm before the shared head at MTP depth `depth` (1-based): the module's own output norm
        (over_decoding.output_norm per_module, DeepSeek-V3) or the trunk's final norm (shared)."""
        own = self.mtp[depth - 1].output_norm
        return self.norm if own is None else own

    def head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean CE of the output head on normed hidden states. A head swapped in by a parallelize step may
        bring its own `loss` (a vocab-parallel head never materialises full logits)."""
        own_loss = getattr(self.lm_head, "loss", None)
        if own_loss is not None:
            return own_loss(hidden, targets)
        return cross_entropy(self.lm_head(hidden), targets)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                doc_starts: torch.Tensor | None = None) -> ModelOutput:
        cfg = self.cfg
        if labels is None:
            labels = labels_from_inputs(input_ids, doc_starts)
        h, emb, oe_ids, router, rope, mask = self.forward_hidden(input_ids, doc_starts)
        hn = self.norm(h)
        terms = {"lm": self.head_loss(hn, labels)}
        if self.mtp is not None:
            h_d = h
            for d, module in enumerate(self.mtp, start=1):
                h_d, stats = module(h_d, shift_left(emb, d), rope, mask)
                router.append(stats)
                # depth d predicts x_{i+d+1} = labels[i+d] through its norm (mtp_norm) and the shared head
                terms[f"mtp_{d}"] = self.head_loss(self.mtp_norm(d)(h_d), shift_labels(labels, d))
        if self.od_heads is not None:
            for j, head in enumerate(self.od_heads, start=2):
                terms[f"od_{j}"] = cross_entropy(head(hn), shift_labels(labels, j - 1))
        od_keys = [key for key in terms if key != "lm"]

        loss = terms["lm"]
        for key, weight in zip(od_keys, cfg.over_decoding.term_weights()):
            loss = loss + weight * terms[key]
        stats: dict[str, torch.Tensor] = {}
        if cfg.is_moe:
            for suffix, group in aux_loss_groups(router, cfg.n_layers, cfg.mtp_aux_loss).items():
                terms["lb" + suffix] = torch.stack([r.lb for r in group]).mean()
                terms["z" + suffix] = torch.stack([r.z for r in group]).mean()
                loss = loss + cfg.lb_coef * terms["lb" + suffix] + cfg.z_coef * terms["z" + suffix]
            stats["expert_counts"] = torch.stack([r.counts for r in router])
        else:
            terms["lb"] = terms["z"] = torch.zeros((), device=loss.device)
        if oe_ids is not None:
            stats["oe_ids"] = oe_ids
        losses = {key: value.detach() for key, value in terms.items()}
        losses["loss"] = loss.detach()
        return ModelOutput(loss=loss, losses=losses, stats=stats)
