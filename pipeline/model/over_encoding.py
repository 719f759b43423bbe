"""Over-Encoding (paper §3.2, Alg. 1): hierarchical hashed n-gram input embeddings.

Table t (t = 0 .. k(n-1)-1) serves n-gram order 2 + t//k, has m + 2t rows and width D/(k(n-1)); the row
of position i is g_order(i) mod (m + 2t) with g_o(i) = sum_{j<o} x_{i-j} V^j. Output
    ( E_tok[x_i] + sum_t W_t E_t[row_t(i)] ) / (1 + k(n-1))
All tables live in ONE parameter (`table`, sum_t (m+2t) rows) addressed through per-table row offsets, and
all lookups go through `lookup`, so a parallelize step can row-shard the table and swap in an all-to-all
lookup (paper §3.3). The k(n-1) projections W_t are one Linear over the concatenated table vectors, which
equals sum_t W_t e_t in one GEMM.

Two monitoring switches, both off (None) unless the trainer's OE health metrics set them
(pipeline/train/oe_health.py). They are plain attributes, not buffers, so they are never checkpointed,
broadcast or moved with the module, and they act in training mode only (validation and evaluation forwards
would otherwise count as use of the tables):
  touched_rows  bool [rows of `table`]: every training lookup marks the rows it reads (a sharded lookup marks
                the rows its owner serves to any rank);
  norm_probe    a list: each training forward appends norm_stats(...) of its token embedding and n-gram part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.model import OverEncodingConfig
from pipeline.model.norms import RMSNorm


def context_tokens(input_ids: torch.Tensor, lag: int, doc_starts: torch.Tensor | None = None,
                   doc_start_pos: torch.Tensor | None = None) -> torch.Tensor:
    """x_{i-lag} for every position of input_ids [..., B, S]; 0 before the sequence start and, given
    doc_starts [B, S], before the start of position i's own document (doc_start_pos: document_start_positions
    of doc_starts, when the caller already has it)."""
    s = input_ids.shape[-1]
    shifted = F.pad(input_ids, (lag, 0))[..., :s] if lag < s else torch.zeros_like(input_ids)
    if doc_starts is None or lag == 0:
        return shifted
    if doc_start_pos is None:
        doc_start_pos = document_start_positions(doc_starts)
    pos = torch.arange(s, device=input_ids.device)
    return torch.where(pos - lag >= doc_start_pos, shifted, torch.zeros_like(shifted))


def document_start_positions(doc_starts: torch.Tensor) -> torch.Tensor:
    """[B, S]: the latest document start at or before each position (position 0 always counts as one)."""
    pos = torch.arange(doc_starts.shape[-1], device=doc_starts.device)
    return torch.where(doc_starts, pos, torch.zeros_like(pos)).cummax(dim=-1).values


def ngram_table_ids(input_ids: torch.Tensor, vocab_size: int, n: int, k: int, m: int,
                    doc_starts: torch.Tensor | None = None, orders: list[int] | None = None) -> torch.Tensor:
    """Row of every OE table for every position: LongTensor [k(n-1), B, S], values in [0, m + 2t).
    `orders` (default 2..n) picks the n-gram orders that get k tables each (hierarchy ablations).

    Exact for any n and V without int64 overflow: per table modulus M = m + 2t, each term is
    (x mod M) * (V^j mod M) < M^2 < 2^63 and the sum is reduced mod M after every term (V^j mod M is
    computed with Python integers). Pass doc_starts to restart the context at document boundaries.
    """
    orders = list(range(2, n + 1)) if orders is None else list(orders)
    num_tables = k * len(orders)
    device = input_ids.device
    moduli = torch.tensor([m + 2 * t for t in range(num_tables)], dtype=torch.long, device=device)
    # coef[t, j] = V^j mod M_t for j < order(t), else 0 (the term is not part of that table's n-gram)
    coef = torch.tensor([[pow(vocab_size, j, m + 2 * t) if j < orders[t // k] else 0 for j in range(n)]
                         for t in range(num_tables)], dtype=torch.long, device=device)
    mod = moduli.view(-1, 1, 1)
    # x mod M_t once; x_{i-j} mod M_t is its shift (the zeros before a start are 0 mod M_t too)
    x_mod = input_ids.long().unsqueeze(0) % mod                                  # [T, B, S]
    start_pos = document_start_positions(doc_starts) if doc_starts is not None else None
    ids = x_mod * coef[:, 0].view(-1, 1, 1)
    for j in range(1, n):
        x_j = context_tokens(x_mod, j, doc_starts, start_pos)
        ids.add_(x_j * coef[:, j].view(-1, 1, 1)).remainder_(mod)
    return ids


class OverEncoding(nn.Module):
    def __init__(self, cfg: OverEncodingConfig, d_model: int, vocab_size: int, norm_eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.num_tables = cfg.num_tables
        self.table_dim = d_model // cfg.num_tables
        self.table_rows = cfg.moduli()
        self.table = nn.Parameter(torch.empty(sum(self.table_rows), self.table_dim))
        self.table._oe_table = True  # own optimizer group, row-sharded by the parallelize step
        self.register_buffer("row_offsets", torch.empty(self.num_tables, dtype=torch.long), persistent=False)
        self.proj = nn.Linear(self.num_tables * self.table_dim, d_model, bias=False)
        # True: the table gradient is a sparse COO tensor over the looked-up rows only (no table-sized
        # zero fill per step); needs a table optimizer that takes sparse gradients (RowSparseAdam).
        self.sparse_grad = False
        self.output_norm = RMSNorm(d_model, norm_eps) if cfg.output_norm else None
        self.touched_rows: torch.Tensor | None = None
        self.norm_probe: list[torch.Tensor] | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        nn.init.trunc_normal_(self.table, 0.0, std, -3 * std, 3 * std)
        self.proj.reset_parameters()
        self.reset_buffers()

    def reset_buffers(self) -> None:
        offsets = [0]
        for rows in self.table_rows[:-1]:
            offsets.append(offsets[-1] + rows)
        if self.row_offsets.device.type != "meta":
            self.row_offsets.copy_(torch.tensor(offsets, dtype=torch.long))

    def lookup(self, global_rows: torch.Tensor) -> torch.Tensor:
        """Rows of the stacked table -> vectors [..., table_dim]. Replaced by a sharded lookup under DP."""
        if self.touched_rows is not None and self.training:
            self.touched_rows[global_rows] = True
        if self.sparse_grad and self.table.requires_grad and torch.is_grad_enabled():
            return _DedupedSparseLookup.apply(self.table, global_rows)
        return F.embedding(global_rows, self.table)

    def table_ids(self, input_ids: torch.Tensor, doc_starts: torch.Tensor | None) -> torch.Tensor:
        c = self.cfg
        return ngram_table_ids(input_ids, self.vocab_size, c.n, c.k, c.m,
                               doc_starts if c.reset_at_doc else None, c.orders)

    def forward(self, token_emb: torch.Tensor, input_ids: torch.Tensor,
                doc_starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """token_emb [B, S, D] (the 1-gram embedding) -> (OE embedding [B, S, D], table ids [T, B, S])."""
        return self._forward_ids(token_emb, self.table_ids(input_ids, doc_starts))

    def forward_incremental(self, token_emb: torch.Tensor, new_ids: torch.Tensor, history: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoding: embed the s new tokens [B, s] given the n-gram id cache `history` [B, n-1] (the
        previous n-1 ids of each row, zeros before the start). Only the new positions' rows are looked up
        (one lookup per table per token); returns (embedding [B, s, D], the updated history)."""
        ctx = history.shape[1]
        window = torch.cat([history, new_ids], dim=1)                         # [B, n-1+s]
        c = self.cfg
        ids = ngram_table_ids(window, self.vocab_size, c.n, c.k, c.m, orders=c.orders)[:, :, ctx:]  # [T, B, s]
        return self._forward_ids(token_emb, ids)[0], window[:, window.shape[1] - ctx:]

    def _forward_ids(self, token_emb: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        global_rows = ids + self.row_offsets.view(-1, 1, 1)
        vecs = self.lookup(global_rows.permute(1, 2, 0))                      # [B, S, T, d_t]
        # = sum_t W_t e_t. Under bf16 autocast the projection runs in bf16 but its output joins the fp32
        # token embedding, and the 1/(1+k(n-1)) mean below is taken in fp32, so the small n-gram share is
        # not rounded against the 1-gram embedding.
        summed = self.proj(vecs.flatten(-2))
        ngram = summed
        if self.output_norm is not None:
            ngram = self.output_norm(ngram)
        if self.cfg.output_scale != 1.0:
            ngram = ngram * self.cfg.output_scale
        if self.norm_probe is not None and self.training:
            self.norm_probe.append(self.norm_stats(token_emb, vecs, summed, ngram))
        if not self.cfg.unigram:        # ablation: the mean over the n-gram tables only
            return ngram / self.num_tables, ids
        # in place on the sum: one [B, S, D] temporary less (bitwise the same as (token_emb + ngram) / (1 + T))
        return torch.add(token_emb, ngram).div_(1 + self.num_tables), ids

    @torch.no_grad()
    def norm_stats(self, token_emb: torch.Tensor, vecs: torch.Tensor, summed: torch.Tensor,
                   ngram: torch.Tensor) -> torch.Tensor:
        """Sums of squares (fp64, detached) [token_emb, n-gram part as it enters the mean, sum_t W_t e_t,
        W_0 e_0, ..., W_{T-1} e_{T-1}]. All have B*S*D elements, so ratios of these sums are squared RMS ratios.
        The per-table projections are one small GEMM per table (the FLOPs of the projection once more), so
        they are only computed when the probe is on."""
        def sq(x: torch.Tensor) -> torch.Tensor:
            return x.double().square().sum()
        weight = self.proj.weight.view(self.proj.out_features, self.num_tables, self.table_dim)
        per_table = [sq(vecs[..., t, :].to(weight.dtype) @ weight[:, t].T) for t in range(self.num_tables)]
        return torch.stack([sq(token_emb), sq(ngram), sq(summed), *per_table])


class _DedupedSparseLookup(torch.autograd.Function):
    """F.embedding(table, rows, sparse=True) whose gradient comes out coalesced. The rows are deduped once in
    the forward (one sort of the step's rows), so the backward is one index_add into the unique rows and
    RowSparseAdam's coalesce is a no-op; F.embedding's sparse gradient instead lists every position's row and
    the optimizer had to sort and sum them (measured: bench/peers.py --oe, docs/performance.md)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        uniq, inverse = torch.unique(rows.reshape(-1), sorted=True, return_inverse=True)
        ctx.save_for_backward(uniq, inverse)
        ctx.table_shape, ctx.table_dtype = table.shape, table.dtype
        return F.embedding(rows, table)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        uniq, inverse = ctx.saved_tensors
        dim = ctx.table_shape[1]
        grad_rows = torch.zeros(uniq.numel(), dim, dtype=ctx.table_dtype, device=grad_out.device)
        grad_rows.index_add_(0, inverse, grad_out.reshape(-1, dim).to(ctx.table_dtype))
        grad = torch.sparse_coo_tensor(uniq.unsqueeze(0), grad_rows, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False)
        return grad, None
