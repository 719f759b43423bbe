"""MTP speculative decoding (`launch/generate.py --speculative mtp`): the model's own MTP-DS modules draft,
the trunk verifies.

DeepSeek-V3 (technical report, 2024, §2.2 and §5.4.3) notes that its MTP modules, trained only as a
densified training signal, can draft for speculative decoding. An OT model has the same modules: MTP depth d
at position i reads the trunk state h^{d-1}_i and the input embedding (the OE embedding, with its n-gram
context) of x_{i+d}, and predicts x_{i+d+1} through its norm (OLMoE.mtp_norm) and the shared head
(over_decoding.py).

One step of a row, with the tokens x_0..x_T known (x_T, the "pending" token, already chosen but not yet fed
to the trunk) and the trunk's KV cache holding positions 0..T-1:
  draft   at position T-1, depth d = 1..D' gives q_d, the distribution of x_{T+d}; the draft x_{T+d} ~ q_d is
          the embedding input of depth d+1 (depth 1 reads the pending token x_T).
  verify  ONE trunk pass over [x_T, x_{T+1}, .., x_{T+D'}] (appended to the KV cache) gives the target
          distributions p_0..p_{D'} of x_{T+1}..x_{T+D'+1}.
  accept  speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
          Decoding", Alg. 1; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
          Sampling", Alg. 2), `speculative_accept`: the k accepted drafts and the token after them are
          distributed exactly as k+1 tokens sampled one by one from p. Greedy is the one-hot case (p, q =
          argmax): the longest prefix of drafts equal to the trunk's argmax, then the trunk's own token, so
          greedy output is plain greedy output.
  commit  the trunk's KV cache drops the D'-k rejected positions (kv_cache.DecodeCache.drop_last) and its OE
          n-gram id cache is reset to the last n-1 committed ids; the verify pass's hidden states at the k+1
          committed positions are what the next drafts read (no second trunk pass).
p and q get the same temperature / top-k / top-p warping as plain sampling (sampling.next_token_probs), so
the output follows the distribution plain `generate` samples from.

MTP caches: each depth is a causal transformer block over its own stream of positions, so each keeps a KV
cache. Depth d at position j needs x_{j+d}: after drafting it keeps the positions with j + d <= T (inputs
all committed) and drops the others, which used drafts; the next step recomputes them (d-1 per depth) from
committed tokens. The drafts are thus exactly what the training forward computes on the committed tokens
followed by the drafts (tested).

Batches: rows accept different numbers of drafts, so the caches drop different numbers of slots per row;
dropped slots stay in the cache as non-real slots (like padding), and a token's RoPE position counts only
its row's real slots (kv_cache.py), so every row sees exactly its own sequence. The caches thus hold up to
(D+1) slots per generated token. Finished rows (EOS, limit) feed padding until the batch is done.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.generate.generator import GenerationResult, check_prompts, left_pad
from pipeline.generate.sampling import SamplingConfig, next_token_probs
from pipeline.model.kv_cache import DecodeCache


@dataclass
class SpeculativeResult(GenerationResult):
    drafted: int = 0            # draft tokens proposed to unfinished rows
    accepted: int = 0           # ... of which the trunk accepted
    verify_passes: int = 0      # trunk passes after the prefill

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class DraftStep:
    """One row's verify step, recorded by `generate_speculative(trace=[...])` (tests, benchmarks)."""
    row: int
    tokens: list[int]           # x_0..x_T: prompt and committed tokens, the pending one last
    drafts: list[int]           # x_{T+1}..x_{T+D'} as drafted
    draft_probs: torch.Tensor   # [D', V] the warped q each draft was drawn from
    accepted: int


def speculative_accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                       generator: torch.Generator | None = None, greedy: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling for N independent rows: p [N, D+1, V] target distributions (p[:, j] of the token
    after j drafts), q [N, D, V] draft distributions, drafts [N, D] drawn from q. Returns the number of
    accepted drafts k [N] and the token that follows them [N].

    Draft j is accepted with probability min(1, p_j(x)/q_j(x)), in order, until the first rejection; after a
    rejection at j the next token comes from norm(max(0, p_j - q_j)), after D acceptances from p_D (the
    "bonus" token). Each emitted token is then distributed as p (Leviathan et al. 2023, Thm. 1).
    `greedy`: p and q are one-hot, so the next token is the residual's argmax (no multinomial draw)."""
    n, d = drafts.shape
    u = torch.rand(n, d, generator=generator, device=p.device)
    p_x = p[:, :d].gather(-1, drafts[..., None]).squeeze(-1)
    q_x = q.gather(-1, drafts[..., None]).squeeze(-1)
    # u < min(1, p/q) without dividing; q_x > 0 since x was drawn from q (greedy: 1 < 1 or 0 < 1 exactly)
    accepted = (u * q_x < p_x).long().cumprod(dim=-1).sum(dim=-1)
    # q is 0 at the bonus position, so the same residual formula gives p_D there
    at_k = accepted.view(n, 1, 1).expand(n, 1, p.shape[-1])
    p_k = p.gather(1, at_k).squeeze(1)
    residual = (p_k - F.pad(q, (0, 0, 0, 1)).gather(1, at_k).squeeze(1)).clamp(min=0)
    # p <= q everywhere means p == q, whose rejection probability is 0: only rounding gets here
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_k)
    return accepted, draw(residual, generator, greedy)


def draw(probs: torch.Tensor, generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
    """One token per row of probs [N, V]; the argmax when greedy (the distribution is one-hot)."""
    if greedy:
        return probs.argmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _Speculator:
    """Decoding state of a batch: the trunk cache, one KV cache per MTP depth, the tokens by row and
    position (`seq`, committed tokens, then the pending one and scratch drafts), and the hidden states the
    depths read by row and position: hidden[0] = trunk output h^0, hidden[d] = depth d output."""

    def __init__(self, model, prompts: list[list[int]], max_new: int, sampling: SamplingConfig,
                 generator: torch.Generator):
        self.model, self.sampling, self.gen = model, sampling, generator
        self.greedy = sampling.temperature == 0
        self.depth = len(model.mtp)
        self.device = device = model.lm_head.weight.device
        oe = model.cfg.over_encoding
        self.context = oe.n - 1 if oe.enabled else 0        # ids the n-gram embedding looks back
        b, width = len(prompts), max(map(len, prompts))
        self.rows = torch.arange(b, device=device)
        # a step appends D'+1 trunk slots and up to D'+d slots at depth d, and makes >= 1 token per row
        slots = width + max_new * (2 * self.depth + 1)
        self.trunk = model.new_decode_cache(b, slots)
        self.caches = [DecodeCache(b, slots, 1, 0, device) for _ in model.mtp]
        self.seq = torch.zeros(b, width + max_new + 2 * self.depth + 2, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            self.seq[i, :len(p)] = torch.tensor(p, device=device)
        self.hidden: list[torch.Tensor] = []

    def _history(self, end: torch.Tensor) -> torch.Tensor | None:
        """The n-1 ids before position end[b] of every row [B, n-1], zeros before the start (as OE pads)."""
        if not self.context:
            return None
        idx = end[:, None] - self.context + torch.arange(self.context, device=self.device)
        return self.seq.gather(1, idx.clamp(min=0)).masked_fill(idx < 0, 0)

    def _embed(self, ids: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Input embedding [B, s, D] of ids [B, s] that follow `history` in their rows."""
        emb = self.model.embed(ids)
        if self.model.over_encoding is None:
            return emb
        return self.model.over_encoding.forward_incremental(emb, ids, history)[0]

    def _probs(self, h: torch.Tensor, depth: int = 0) -> torch.Tensor:
        """Pre-norm hidden states [..., D] of the trunk (depth 0) or MTP depth `depth` -> warped next-token
        distributions [..., V] (padding ids cut); each depth through its own norm (OLMoE.mtp_norm)."""
        norm = self.model.mtp_norm(depth) if depth else self.model.norm
        logits = self.model.lm_head(norm(h))[..., : self.model.cfg.vocab_size]
        return next_token_probs(logits, self.sampling)

    def _store(self, level: int, h: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> None:
        """hidden[level][b, pos[b, i]] = h[b, i] where keep[b, i]."""
        self.hidden[level][self.rows[:, None].expand_as(pos)[keep], pos[keep]] = h[keep]

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill the left-padded prompts and choose every row's first token, as plain decoding does."""
        ids, valid = left_pad(prompts, self.device)
        h = self.model.decode_hidden(ids, self.trunk, valid)
        self.hidden = [h.new_zeros(len(prompts), self.seq.shape[1], h.shape[-1]) for _ in self.caches]
        self._store(0, h, self.trunk.positions, valid)
        first = draw(self._probs(h[:, -1]), self.gen, self.greedy)
        self.seq[self.rows, self.trunk.count] = first
        return first

    def draft(self, n: int, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafts x_{T+1}..x_{T+n} [B, n] and their distributions [B, n, V] from depths 1..n at position T-1
        of every active row (T = the positions in the row's trunk cache); written to `seq` as scratch."""
        t = self.trunk.count.clone()
        qs = []
        for d in range(1, n + 1):
            cache = self.caches[d - 1]
            start = cache.count.clone()                     # this depth holds positions [0, start) of each row
            todo = torch.where(active, t - start, 0)        # positions [start, T) are missing
            i = torch.arange(int(todo.max()), device=self.device)
            pos = start[:, None] + i
            valid = i < todo[:, None]                       # rows with fewer positions are padded at the end
            pos = torch.where(valid, pos, 0)
            h_prev = self.hidden[d - 1][self.rows[:, None], pos]
            ids = torch.where(valid, self.seq.gather(1, pos + d), 0)
            h = self.model.decode_mtp(d, h_prev, self._embed(ids, self._history(start + d)), cache, valid)
            # keep positions j with j + d <= T: later ones read drafts and are recomputed next step
            cache.drop_last(torch.where(active, torch.minimum(t, torch.full_like(t, d - 1)), 0))
            if d < self.depth:
                self._store(d, h, pos, valid)
            q = self._probs(h[self.rows, (todo - 1).clamp(min=0)], d)          # at position T-1: [B, V]
            self.seq[self.rows, t + d] = draw(q, self.gen, self.greedy)
            qs.append(q)
        drafts = self.seq.gather(1, t[:, None] + 1 + torch.arange(n, device=self.device))
        vocab = self.model.cfg.vocab_size
        return drafts, (torch.stack(qs, dim=1) if qs else self.hidden[0].new_zeros(len(t), 0, vocab))

    def verify(self, drafts: torch.Tensor, q: torch.Tensor, active: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One trunk pass over every active row's pending token and drafts; commits the accepted drafts and
        the next token, drops the rest from the trunk cache. Returns (accepted [B], x_{T+1}..x_{T+D'+1} [B, D'+1]
        of which the first accepted+1 are the new tokens)."""
        t = self.trunk.count.clone()
        chunk = torch.cat([self.seq[self.rows, t][:, None], drafts], dim=1)
        valid = active[:, None].expand_as(chunk)
        h = self.model.decode_hidden(chunk, self.trunk, valid)
        k, nxt = speculative_accept(self._probs(h), q, drafts, self.gen, self.greedy)
        k = torch.where(active, k, 0)
        i = torch.arange(chunk.shape[1], device=self.device)
        self._store(0, h, t[:, None] + i, valid & (i <= k[:, None]))
        committed = torch.where(active, t + k + 1, t)      # x_T and the accepted drafts are now in the trunk
        self.seq[self.rows, committed] = torch.where(active, nxt, self.seq[self.rows, committed])
        self.trunk.drop_last(torch.where(active, drafts.shape[1] - k, 0), self._history(committed))
        return k, self.seq.gather(1, t[:, None] + 1 + i)


@torch.no_grad()
def generate_speculative(model, prompts: list[list[int]], max_new_tokens: int,
                         sampling: SamplingConfig = SamplingConfig(), eos_id: int | None = None, seed: int = 0,
                         trace: list | None = None) -> SpeculativeResult:
    """`generator.generate` with MTP drafting: same prompts, limits and EOS rule (`finished` = stopped at
    EOS). Every MTP depth drafts. `trace`: a list that receives a DraftStep per active row and verify pass."""
    sampling.validate()
    cfg = model.cfg
    if not model.mtp:
        raise ValueError(f"MTP speculative decoding needs MTP modules (over_decoding.mode 'mtp'); this model "
                         f"has over_decoding.mode {cfg.over_decoding.mode!r}")
    check_prompts(prompts, cfg.vocab_size, cfg.max_seq_len)
    model.eval()
    device = model.lm_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    # as plain decoding: never past max_seq_len (RoPE / training length)
    limits = [max(0, min(max_new_tokens, cfg.max_seq_len - len(p))) for p in prompts]
    result = SpeculativeResult([[] for _ in prompts], [False] * len(prompts))
    done = [n == 0 for n in limits]
    if all(done):
        return result
    state = _Speculator(model, prompts, max(limits), sampling, gen)
    new = state.start(prompts)[:, None].tolist()
    while True:
        for i, tokens in enumerate(new):
            for t in tokens:
                if done[i]:
                    break
                if eos_id is not None and t == eos_id:
                    done[i] = result.finished[i] = True
                else:
                    result.tokens[i].append(t)
                    done[i] = len(result.tokens[i]) == limits[i]
        if all(done):
            return result
        active = torch.tensor([not x for x in done], device=device)
        # a verify pass makes up to n + 1 tokens per row: never draft past the longest remaining limit
        n = min(state.depth, max(limits[i] - len(result.tokens[i]) for i in range(len(done)) if not done[i]) - 1)
        known = ([row[:end] for row, end in zip(state.seq.tolist(), (state.trunk.count + 1).tolist())]
                 if trace is not None else None)
        drafts, q = state.draft(n, active)
        k, emitted = state.verify(drafts, q, active)
        counts = k.tolist()
        result.drafted += n * int(active.sum())
        result.accepted += sum(counts)
        result.verify_passes += 1
        new = [row[:c + 1] if not done[i] else [] for i, (row, c) in enumerate(zip(emitted.tolist(), counts))]
        if known is not None:
            trace += [DraftStep(i, known[i], drafts[i].tolist(), q[i], counts[i])
                      for i in range(len(done)) if not done[i]]
