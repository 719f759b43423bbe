"""Score multiple-choice items by continuation log-likelihood under three normalisations:
    raw       sum of log-probabilities of the continuation tokens        (OLMo metric "acc")
    per_token that sum / number of continuation tokens                    (lm-eval style token mean)
    per_char  that sum / number of characters of the continuation string  (OLMo "len_norm", incl. the
              leading space; lm-eval's acc_norm uses bytes, identical for ASCII)
Accuracy under each, and the task's primary one (pipeline/eval/tasks.py), are reported.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.eval.scoring import continuation_logprobs
from pipeline.eval.tasks import MCItem

NORMALISATIONS = ("raw", "per_token", "per_char")


@dataclass
class ItemScore:
    item_id: str
    label: int
    logprobs: list[float]          # raw sums, one per continuation
    n_tokens: list[int]
    n_chars: list[int]

    def scores(self, norm: str) -> list[float]:
        if norm == "raw":
            return self.logprobs
        denom = self.n_tokens if norm == "per_token" else self.n_chars
        return [lp / max(d, 1) for lp, d in zip(self.logprobs, denom)]

    def prediction(self, norm: str) -> int:
        s = self.scores(norm)
        return max(range(len(s)), key=s.__getitem__)      # first best on ties


def score_items(model, tokenizer, items: list[MCItem], batch_tokens: int = 8192,
                split_ranks: bool = True) -> list[ItemScore]:
    """Context and each continuation are tokenized separately (as OLMo does), then scored in one batch pass."""
    contexts = tokenizer.encode_batch([it.context for it in items])
    conts = tokenizer.encode_batch([c for it in items for c in it.continuations])
    requests, spans, k = [], [], 0
    for it, ctx in zip(items, contexts):
        n = len(it.continuations)
        spans.append((len(requests), n))
        requests += [(ctx, conts[k + j]) for j in range(n)]
        k += n
    logprobs = continuation_logprobs(model, requests, batch_tokens, split_ranks=split_ranks)
    out = []
    for it, (start, n) in zip(items, spans):
        out.append(ItemScore(it.item_id, it.label, logprobs[start:start + n],
                             [len(requests[start + j][1]) for j in range(n)], [len(c) for c in it.continuations]))
    return out


def accuracy(scores: list[ItemScore]) -> dict[str, float]:
    n = max(len(scores), 1)
    return {f"acc_{norm}": sum(s.prediction(norm) == s.label for s in scores) / n for norm in NORMALISATIONS}
