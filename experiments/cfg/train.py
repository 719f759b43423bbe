"""Train one CFG model (a plain AdamW loop: the data is synthetic and in memory) and measure its generation
accuracy: the fraction of strings sampled at temperature 1 from BOS that the cfg3f parser accepts."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from experiments.cfg.checker import parse_depth
from experiments.cfg.data import BOS, CFGStream
from experiments.cfg.grammar import DEPTH, MAX_LEN, span_bounds
from experiments.cfg.models import build, first_token_logits, losses


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, cosine to 0.1x (the paper's GPT-2 runs use cosine)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def val_loss(model, batches: list[torch.Tensor], seq_len: int, variant: str) -> float:
    model.eval()
    out = float(np.mean([losses(model, w, seq_len, variant)[1].item() for w in batches]))
    model.train()
    return out


@torch.no_grad()
def generate(model, variant: str, count: int, seed: int, batch: int = 500, max_len: int = MAX_LEN) -> list[list[int]]:
    """`count` strings sampled at temperature 1 from BOS (KV cache); a string ends at the first separator.
    Strings still running after max_len + 1 tokens are returned too long (the parser rejects them)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    for start in range(0, count, batch):
        b = min(batch, count - start)
        cache = model.new_decode_cache(b, max_len + 2)
        tokens = torch.full((b, 1), BOS, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        rows: list[list[int]] = [[] for _ in range(b)]
        for _ in range(max_len + 1):
            logp = first_token_logits(model.decode(tokens, cache)[:, -1], variant)
            nxt = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(1)
            for i in torch.nonzero(~done & (nxt != BOS)).flatten().tolist():
                rows[i].append(int(nxt[i]))
            done |= nxt == BOS
            if done.all():
                break
            tokens = nxt.view(-1, 1)
        out.extend(rows)
    model.train()
    return out


def accuracy(model, variant: str, count: int, seed: int, root_level: int) -> tuple[list[list[int]], list[int]]:
    """(samples, parse depths); a sample is valid iff its depth is the grammar's full DEPTH - root_level
    (tests check that this agrees with checker.is_valid)."""
    strings = generate(model, variant, count, seed, max_len=span_bounds(root_level)[1])
    return strings, [parse_depth(s, root_level) for s in strings]


def seconds_per_step(sizes: list[str], batch: int, seq_len: int, root_level: int, steps: int = 6,
                     rounds: int = 3) -> dict[str, dict]:
    """{size: {"params", "s_per_step"}}: the median time of a training step (fwd + bwd + clip + AdamW) of each size's
    1-gram model at the experiment's batch, the sizes timed in interleaved rounds so that load is shared."""
    import statistics

    data = CFGStream(2000, seed=0, root_level=root_level)
    rng = np.random.default_rng(0)
    models = {s: build(s, "1gram", seq_len + 8, 0) for s in sizes}
    opts = {s: torch.optim.AdamW(m.parameters(), lr=1e-3) for s, m in models.items()}
    times: dict[str, list[float]] = {s: [] for s in sizes}

    def step(s: str) -> None:
        loss, _ = losses(models[s], data.random_batch(rng, batch, seq_len), seq_len, "1gram")
        opts[s].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[s].parameters(), 1.0)
        opts[s].step()

    for s in sizes:
        step(s)                                   # warm-up: allocator, first-call overheads
    for _ in range(rounds):
        for s in sizes:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(s)
            times[s].append((time.perf_counter() - t0) / steps)
    return {s: {"params": sum(p.numel() for p in models[s].parameters()),
                "s_per_step": round(statistics.median(times[s]), 4)} for s in sizes}


def train_and_evaluate(size: str, variant: str, *, steps: int, batch: int, seq_len: int, lr: float,
                       train_strings: int, samples: int, seed: int, root_level: int = 0, curve_samples: int = 0,
                       log=print, samples_file=None) -> dict:
    """Train one model; `curve_samples` > 0 also measures generation accuracy on that many samples at each of
    the 5 validation points (the accuracy-vs-steps curve)."""
    train = CFGStream(train_strings, seed=1000 + seed, root_level=root_level)
    val = CFGStream(400, seed=999_999, root_level=root_level)   # held-out strings, same for every model
    val_batches = val.fixed_batches(4, 16, seq_len)
    full = DEPTH - root_level
    model = build(size, variant, seq_len + 8, seed)
    # matrices decay, embeddings / norms / OE tables do not (the training system's convention)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n and "table" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n and "table" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(seed)
    curve, acc_curve, t0 = [], [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, max(1, steps // 10))
        loss, _ = losses(model, train.random_batch(rng, batch, seq_len), seq_len, variant)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            v = val_loss(model, val_batches, seq_len, variant)
            curve.append([step + 1, v])
            extra = ""
            if curve_samples:
                _, d = accuracy(model, variant, curve_samples, 20_000 + seed + step, root_level)
                acc_curve.append([step + 1, float(np.mean([x == full for x in d]))])
                extra = f" accuracy {acc_curve[-1][1]:.3f}"
            log(f"[{size}/{variant}] step {step + 1}/{steps} train {loss.item():.4f} val(next-token) {v:.4f}"
                f"{extra} {time.time() - t0:.0f}s")
    train_s = time.time() - t0
    strings, depths = accuracy(model, variant, samples, 10_000 + seed, root_level)
    valid = [d == full for d in depths]
    lengths = [len(s) for s in strings]
    if samples_file is not None:                              # for inspection; not committed (runs/)
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        samples_file.write_text("\n".join("".join(map(str, s)) for s in strings) + "\n")
    return {"size": size, "variant": variant, "seed": seed, "steps": steps, "batch": batch, "seq_len": seq_len,
            "lr": lr, "train_strings": train_strings, "tokens_seen": steps * batch * seq_len,
            "root_level": root_level, "levels": full, "curve_samples": curve_samples,
            "params": sum(p.numel() for p in model.parameters()),
            "final_val_next_token_loss": curve[-1][1], "val_curve": curve, "accuracy_curve": acc_curve,
            "samples": samples, "accuracy": sum(valid) / len(valid),
            # graded validity: mean levels satisfied (0-6) and the fraction reaching each level
            "mean_parse_depth": float(np.mean(depths)),
            "depth_at_least": {str(k): float(np.mean([d >= k for d in depths])) for k in range(1, full + 1)},
            "median_sample_len": float(np.median(lengths)), "train_s": round(train_s, 1),
            "total_s": round(time.time() - t0, 1)}
