"""Over-Tokenized OLMoE for transformers (arXiv 2501.16975): transformers' own OLMoE backbone (attention,
QK-norm, RoPE, softmax top-k MoE without renormalisation, RMSNorm) with Over-Encoding in front of it and the
Over-Decoding heads beside it. Exported by the training repository's `launch/export.py --format hf`;
self-contained (torch + transformers >= 5 only), loaded with `trust_remote_code=True`.

Over-Encoding: table t of k(n-1) serves n-gram order `orders[t // k]`, has m + 2t rows; the row of position i
is g(i) mod (m + 2t), g(i) = sum_{j < order} x_{i-j} V^j with x = 0 before the sequence start. The input
embedding is (E[x_i] + proj(concat_t table_t[row_t(i)])) / (1 + k(n-1)). Every row is one document: the
n-gram context starts at the row's first real token (padding, attention_mask = 0, hashes as "before the
start", exactly like the training code's left padding with id 0).

Incremental decoding (generate() with a KV cache): new tokens need the previous n-1 token ids of their row to
hash their n-grams. `prepare_inputs_for_generation` takes them from the full `input_ids` that generate()
keeps (so beam reordering and padding need no extra state) and passes them as `ngram_context`; a manual
forward over a non-empty cache must pass `ngram_context` itself (an error says so).

Over-Decoding heads (MTP-DS modules or product heads) are loaded but never run by forward();
`over_decoding_logits(input_ids)` runs them over a whole sequence (e.g. to draft tokens for speculation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask
from transformers.models.olmoe.modeling_olmoe import (OlmoeDecoderLayer, OlmoeForCausalLM, OlmoeModel,
                                                      OlmoePreTrainedModel, OlmoeRMSNorm)

from .configuration_over_tokenized_olmoe import OverTokenizedOlmoeConfig


def ngram_rows(ids: torch.Tensor, vocab_size: int, k: int, orders: list[int], moduli: list[int]) -> torch.Tensor:
    """Row of every table for every position of ids [B, L] (x = 0 before position 0): LongTensor [T, B, L].

    int64 never overflows: per table modulus M each term is (x mod M) * (V^j mod M) < M^2 and the sum is
    reduced after every term (V^j mod M with Python integers), so ids are exact for any n and V."""
    ids = ids.long()
    length = ids.shape[1]
    lagged = [F.pad(ids, (j, 0))[:, :length] for j in range(max(orders))]      # x_{i-j}
    tables = []
    for t, modulus in enumerate(moduli):
        row = torch.zeros_like(ids)
        for j in range(orders[t // k]):
            row = (row + (lagged[j] % modulus) * pow(vocab_size, j, modulus)) % modulus
        tables.append(row)
    return torch.stack(tables)


class OverEncoding(nn.Module):
    """All n-gram tables as ONE stacked parameter `table` [sum_t (m + 2t), D / T] (table t starts at row
    sum_{u<t} (m + 2u)) and the T projections as one Linear over the concatenated table vectors."""

    def __init__(self, config: OverTokenizedOlmoeConfig):
        super().__init__()
        self.vocab_size, self.k = config.token_vocab_size, config.oe_k
        self.orders, self.moduli = config.table_orders(), config.table_moduli()
        self.num_tables = len(self.moduli)
        self.context_size = max(self.orders) - 1
        self.unigram, self.output_scale = config.oe_unigram, config.oe_output_scale
        table_dim = config.hidden_size // self.num_tables
        self.table = nn.Parameter(torch.empty(sum(self.moduli), table_dim))
        self.proj = nn.Linear(self.num_tables * table_dim, config.hidden_size, bias=False)
        self.output_norm = OlmoeRMSNorm(config.hidden_size, config.rms_norm_eps) if config.oe_output_norm else None
        # plain Python ints, not a buffer: nothing to re-create when transformers materialises a meta model
        self.row_offsets = [sum(self.moduli[:t]) for t in range(self.num_tables)]

    def forward(self, token_embeds: torch.Tensor, ids: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """token_embeds [B, s, D] of ids [B, s]; context [B, c]: the c <= n-1 ids before them (0 = none)."""
        rows = ngram_rows(torch.cat([context, ids], dim=1), self.vocab_size, self.k, self.orders,
                          self.moduli)[:, :, context.shape[1]:]
        offsets = torch.tensor(self.row_offsets, device=rows.device).view(-1, 1, 1)
        vecs = F.embedding((rows + offsets).permute(1, 2, 0), self.table)                 # [B, s, T, D/T]
        ngram = self.proj(vecs.flatten(-2))
        if self.output_norm is not None:
            ngram = self.output_norm(ngram)
        if self.output_scale != 1.0:
            ngram = ngram * self.output_scale
        if not self.unigram:
            return ngram / self.num_tables
        return (token_embeds + ngram) / (1 + self.num_tables)


def _drop_qk_norm(layer: OlmoeDecoderLayer) -> None:
    # a model trained without QK-norm: OLMoE's attention always calls q_norm / k_norm, so make them identities
    layer.self_attn.q_norm = nn.Identity()
    layer.self_attn.k_norm = nn.Identity()


class MTPModule(nn.Module):
    """DeepSeek-V3 MTP depth: proj([RMSNorm(h_prev); RMSNorm(embed of the token d ahead)]), one OLMoE block."""

    def __init__(self, config: OverTokenizedOlmoeConfig, layer_idx: int):
        super().__init__()
        self.hidden_norm = OlmoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.embed_norm = OlmoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.block = OlmoeDecoderLayer(config, layer_idx)
        if not config.qk_norm:
            _drop_qk_norm(self.block)
        # mtp_output_norm: the module's own norm before the shared head (DeepSeek-V3); else the trunk's
        self.output_norm = OlmoeRMSNorm(config.hidden_size, config.rms_norm_eps) if config.mtp_output_norm else None

    def forward(self, hidden, next_embeds, position_embeddings, attention_mask) -> torch.Tensor:
        x = self.proj(torch.cat([self.hidden_norm(hidden), self.embed_norm(next_embeds)], dim=-1))
        return self.block(x, attention_mask=attention_mask, position_embeddings=position_embeddings)


class VocabHead(nn.Linear):
    """Output head over the embedding rows (vocab_size, padded for speed) whose logits for ids no token maps
    to (>= token_vocab_size) are the dtype's minimum: softmax, loss, generate() and lm-eval then cover the
    tokenizer's vocabulary only, as the training repository's scoring and sampling do."""

    def __init__(self, in_features: int, config: OverTokenizedOlmoeConfig):
        super().__init__(in_features, config.vocab_size, bias=False)
        self.token_vocab_size = config.token_vocab_size or config.vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().forward(hidden)
        if self.token_vocab_size < logits.shape[-1]:
            logits[..., self.token_vocab_size:] = torch.finfo(logits.dtype).min
        return logits


class ProductHead(nn.Module):
    """Product-form head for token i+j: optional Linear(D -> head_dim), then the vocabulary head."""

    def __init__(self, config: OverTokenizedOlmoeConfig):
        super().__init__()
        dim = config.product_head_dim
        self.down = nn.Linear(config.hidden_size, dim, bias=False) if dim > 0 else None
        self.out = VocabHead(dim or config.hidden_size, config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.down(hidden) if self.down is not None else hidden)


class OverTokenizedOlmoePreTrainedModel(OlmoePreTrainedModel):
    config_class = OverTokenizedOlmoeConfig
    _no_split_modules = ["OlmoeDecoderLayer", "OverEncoding", "MTPModule"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, OverEncoding):      # (from_config only: from_pretrained loads every tensor)
            init.normal_(module.table, mean=0.0, std=self.config.initializer_range)


class OverTokenizedOlmoeModel(OverTokenizedOlmoePreTrainedModel, OlmoeModel):
    """OlmoeModel (embed_tokens, layers, norm, rotary_emb) whose input embedding is the Over-Encoding mean."""

    def __init__(self, config: OverTokenizedOlmoeConfig):
        super().__init__(config)
        self.over_encoding = OverEncoding(config) if config.oe_enabled else None
        if not config.qk_norm:
            for layer in self.layers:
                _drop_qk_norm(layer)
        self.post_init()

    def embed(self, input_ids, attention_mask=None, ngram_context=None, past_key_values=None) -> torch.Tensor:
        token_embeds = self.embed_tokens(input_ids)
        if self.over_encoding is None:
            return token_embeds
        ids = input_ids
        if attention_mask is not None and attention_mask.dim() == 2:     # padding hashes as "before the start"
            ids = ids * attention_mask[:, -ids.shape[1]:].to(ids.dtype)
        if ngram_context is None:
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise ValueError("ngram_context: a forward over a non-empty KV cache needs the previous "
                                 f"{self.over_encoding.context_size} token ids of every row (generate() passes them)")
            ngram_context = ids[:, :0]
        return self.over_encoding(token_embeds, ids, ngram_context.to(ids.device, ids.dtype))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, ngram_context=None, **kwargs):
        if input_ids is not None and inputs_embeds is None and self.over_encoding is not None:
            inputs_embeds = self.embed(input_ids, attention_mask, ngram_context, past_key_values)
            input_ids = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               **kwargs)


def _shift_left(x: torch.Tensor, d: int) -> torch.Tensor:
    """x[:, i + d], zeros past the end (those positions have no target)."""
    return torch.cat([x[:, d:], torch.zeros_like(x[:, :d])], dim=1)


class OverTokenizedOlmoeForCausalLM(OverTokenizedOlmoePreTrainedModel, OlmoeForCausalLM):
    def __init__(self, config: OverTokenizedOlmoeConfig):
        # OlmoeForCausalLM.__init__ would first build a plain OlmoeModel; set up the same attributes directly
        OlmoePreTrainedModel.__init__(self, config)
        self.model = OverTokenizedOlmoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = VocabHead(config.hidden_size, config)
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.num_experts = config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok
        n_layers = config.num_hidden_layers
        self.mtp = (nn.ModuleList(MTPModule(config, n_layers + d) for d in range(config.mtp_depth))
                    if config.mtp_depth > 0 else None)
        self.od_heads = (nn.ModuleList(ProductHead(config) for _ in range(config.product_n - 1))
                         if config.product_n >= 2 else None)
        self.post_init()

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        oe = self.model.over_encoding
        if oe is not None and inputs.get("input_ids") is not None:
            # generate() holds every row's whole sequence: the ids before this step's new ones are the context
            seen = input_ids[:, : input_ids.shape[1] - inputs["input_ids"].shape[1]]
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                seen = seen * mask[:, : seen.shape[1]].to(seen.dtype)
            inputs["ngram_context"] = seen[:, -oe.context_size:]
        return inputs

    def over_decoding_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                             ) -> list[torch.Tensor]:
        """Logits [B, S, V] of each Over-Decoding head over whole rows (no cache): MTP depth d predicts token
        i+d+1 (from the trunk's hidden state before the final norm, chained over depths, through the module's
        output norm if it has one, else the shared final norm, and the shared head); product head j predicts token i+j from the normed final hidden state."""
        if self.mtp is None and self.od_heads is None:
            return []
        captured = []
        # the MTP chain starts from the hidden state the final norm receives
        hook = self.model.norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            normed = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        finally:
            hook.remove()
        if self.od_heads is not None:
            return [head(normed) for head in self.od_heads]
        embeds = self.model.embed(input_ids, attention_mask)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        position_embeddings = self.model.rotary_emb(embeds, position_ids)
        mask = create_causal_mask(config=self.config, inputs_embeds=embeds, attention_mask=attention_mask,
                                  past_key_values=None, position_ids=position_ids)
        hidden, logits = captured[0], []
        for d, module in enumerate(self.mtp, start=1):
            hidden = module(hidden, _shift_left(embeds, d), position_embeddings, mask)
            norm = self.model.norm if module.output_norm is None else module.output_norm
            logits.append(self.lm_head(norm(hidden)))
        return logits


__all__ = ["OverTokenizedOlmoeConfig", "OverTokenizedOlmoeModel", "OverTokenizedOlmoeForCausalLM"]
