"""Autoregressive generation for a batch of prompts.

Cached (default): the prompts, left-padded with id 0 to a common length, go through `OLMoE.decode` once
(prefill), then every step feeds one token per row: one attention step against the KV cache and one
Over-Encoding lookup per table from the n-gram id cache (pipeline/model/kv_cache.py). Uncached
(`use_cache=False`): every step recomputes the full logits of each row's whole sequence; it is the reference
the cached path is tested against and costs O(length^2).

Only the main next-token head decodes here; MTP modules draft in speculative.py (`--speculative mtp`),
product heads are training signals only.
Token ids >= model.cfg.vocab_size (embedding padding) are never sampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.generate.sampling import SamplingConfig, sample_next


@dataclass
class GenerationResult:
    tokens: list[list[int]]          # generated ids per prompt (EOS excluded)
    finished: list[bool]             # True when the row stopped at EOS


def check_prompts(prompts: list[list[int]], vocab_size: int, max_len: int) -> None:
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty (start it with at least one token, e.g. EOS as BOS)")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i}: token id {bad[0]} outside the vocabulary [0, {vocab_size})")
        if len(p) > max_len:
            raise ValueError(f"prompt {i}: {len(p)} tokens > the model's max_seq_len {max_len}")


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             eos_id: int | None = None, seed: int = 0, use_cache: bool = True) -> GenerationResult:
    sampling.validate()
    cfg = model.cfg
    check_prompts(prompts, cfg.vocab_size, cfg.max_seq_len)
    model.eval()
    device = model.lm_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    b = len(prompts)
    lengths = [len(p) for p in prompts]
    # never run past max_seq_len (RoPE / training length); shorter prompts still get max_new_tokens
    steps = max(0, min(max_new_tokens, cfg.max_seq_len - min(lengths)))
    out: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    step_logits = _cached_steps(model, prompts, steps, device) if use_cache else _uncached_steps(model, prompts, device)
    logits = next(step_logits)
    for step in range(steps):
        tokens = sample_next(logits[:, : cfg.vocab_size], sampling, gen)
        for i, t in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if eos_id is not None and t == eos_id:
                done[i] = True
            elif lengths[i] + len(out[i]) >= cfg.max_seq_len:
                done[i] = True
            else:
                out[i].append(t)
        if all(done) or step == steps - 1:
            break
        # finished rows keep decoding (their tokens are ignored) so the batch stays rectangular
        logits = step_logits.send(tokens)
    return GenerationResult(out, done)


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded with id 0 to a common length (see kv_cache.py) [B, W], and the real-token mask."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        valid[i, width - len(p):] = True
    return ids, valid


def _cached_steps(model, prompts: list[list[int]], steps: int, device: torch.device):
    """Coroutine: yields next-token logits [B, V]; receives the tokens chosen for each row."""
    ids, valid = left_pad(prompts, device)
    cache = model.new_decode_cache(len(prompts), ids.shape[1] + steps)
    logits = model.decode(ids, cache, valid, last_only=True)[:, -1]
    while True:
        tokens = yield logits
        logits = model.decode(tokens.view(-1, 1), cache)[:, -1]


def _uncached_steps(model, prompts: list[list[int]], device: torch.device):
    seqs = [list(p) for p in prompts]
    while True:
        logits = torch.cat([model.logits(torch.tensor([s], device=device))[:, -1] for s in seqs])
        tokens = yield logits
        for s, t in zip(seqs, tokens.tolist()):
            s.append(t)
