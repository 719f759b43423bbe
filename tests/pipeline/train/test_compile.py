"""model.compile: true (torch.compile of every transformer block, pipeline/parallel/compile.py).

- Equivalence: the tiny CPU run (configs/run/tiny-cpu.yaml: OLMoE + OE + MTP, fp32) trains with compiled
  blocks to the same per-step losses as eager, within 1e-5 over 5 steps.
- A block traces to one graph without breaks (fp32 grouped GEMM included: pipeline/model/grouped_mm.py), and
  compiling keeps the parameter names (checkpoints and exporters read them).
- ZeRO-3 is refused with a one-line ConfigError.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.model import build_model
from pipeline.parallel.compile import compile_blocks, transformer_blocks
from pipeline.train.parallel_run import check_run_layout
from tests.helpers.multirank import REPO, run_ranks
from tests.pipeline.train.runs import make_shards, tiny_config, train_in_process

STEPS = 5
QUIET = ["checkpoint.every=0", "checkpoint.save_at_end=false", "eval.every=0", "eval.at_end=false",
         "log.tensorboard=false", f"train.max_steps={STEPS}"]


def eager_and_compiled_worker(rank, world, shards, root):
    return {mode: train_in_process(shards, f"{root}/{mode}", *QUIET, f"model.compile={mode == 'compiled'}")
            for mode in ("eager", "compiled")}


def test_compiled_blocks_train_like_eager(tmp_path):
    shards = str(make_shards(tmp_path / "shards"))
    runs = run_ranks(1, "tests.pipeline.train.test_compile:eager_and_compiled_worker",
                     {"shards": shards, "root": str(tmp_path)}, timeout=600)[0]
    eager, compiled = runs["eager"], runs["compiled"]
    assert sorted(int(s) for s in eager) == list(range(1, STEPS + 1)) and eager.keys() == compiled.keys()
    for step, loss in eager.items():
        assert abs(compiled[step] - loss) <= 1e-5, (step, compiled[step], loss)
    assert eager[str(STEPS)] < eager["1"]    # it trains


def test_a_block_is_one_graph_and_names_are_kept():
    cfg = load_model_config(REPO / "configs" / "model" / "tiny-olmoe-ot.yaml")
    model = build_model(cfg, seed=0)
    names = list(model.state_dict())
    block = model.layers[0]
    x = torch.randn(2, 16, cfg.d_model)
    explained = torch._dynamo.explain(block)(x, model.rope(16, x.device, x.dtype), None)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compile_blocks(model)
    assert len(transformer_blocks(model)) == cfg.n_layers + cfg.over_decoding.depth    # trunk + MTP blocks
    assert list(model.state_dict()) == names


def test_zero3_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "shards", tmp_path / "run", "model.compile=true", "deepspeed.zero_stage=3")
    with pytest.raises(ConfigError, match=r"^model\.compile: .*zero_stage=3"):
        check_run_layout(cfg, 1)
