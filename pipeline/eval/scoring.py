"""Continuation log-likelihoods, batched and (when torch.distributed is initialised) split over ranks.

A request is (context ids, continuation ids). The model reads context + continuation[:-1] and the score is
sum_j log p(continuation_j | everything before it). Rows of a batch are right-padded: the model is causal
(attention, Over-Encoding n-grams) and its MoE is dropless and per-token, so padding after a row's last
position cannot change that row's scores. Requests are sorted by length so a batch wastes little padding.
Contexts longer than the model's max_seq_len are cut from the left (as OLMo / lm-eval do).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def continuation_logprobs(model, requests: list[tuple[list[int], list[int]]], batch_tokens: int = 8192,
                          max_batch: int = 64, split_ranks: bool = True) -> list[float]:
    """Sum of log-probabilities of each request's continuation, on every rank (all ranks get all results).

    batch_tokens bounds rows x padded length per forward pass. split_ranks=False makes every rank score every
    request in the same batches: needed when the forward itself runs collectives (sharded OE lookups, expert
    parallelism), which must be entered by all ranks in lockstep."""
    max_len = model.cfg.max_seq_len
    device = model.lm_head.weight.device
    seqs, starts = [], []
    for i, (ctx, cont) in enumerate(requests):
        if not cont or not ctx:
            raise ValueError(f"request {i}: empty {'continuation' if not cont else 'context'}")
        full = (list(ctx) + list(cont))[-(max_len + 1):]
        seqs.append(full)
        starts.append(len(full) - len(cont))      # index in `full` of the first continuation token
    rank, world = rank_and_world() if split_ranks else (0, 1)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))[rank::world]
    local: dict[int, float] = {}
    pos = 0
    while pos < len(order):
        width = len(seqs[order[pos]]) - 1          # longest first: this row sets the padded width
        rows = max(1, min(max_batch, batch_tokens // max(width, 1)))
        batch = order[pos:pos + rows]
        pos += len(batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, i in enumerate(batch):
            s = seqs[i]
            ids[r, : len(s) - 1] = torch.tensor(s[:-1])
            targets[r, starts[i] - 1: len(s) - 1] = torch.tensor(s[starts[i]:])
        targets = targets.to(device)
        scored = targets != -100
        # the output head only at continuation positions: [rows x width x V] logits would dominate memory
        hidden = model.forward_hidden(ids.to(device))[0][scored]
        logits = model.lm_head(model.norm(hidden)).float()[:, : model.cfg.vocab_size]
        logp = -F.cross_entropy(logits, targets[scored], reduction="none")
        row_of = scored.nonzero()[:, 0]
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, row_of, logp.double())
        for r, i in enumerate(batch):
            local[i] = float(sums[r])
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        for part in gathered:
            local.update(part)
    return [local[i] for i in range(len(seqs))]
