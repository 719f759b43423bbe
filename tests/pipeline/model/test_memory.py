"""pipeline/model/memory.py: the precision rule per parameter kind, by hand on the tiny OE model.

tiny-olmoe-oe: n parameters, of which `t` OE table and `x` expert parameters; rest = n - t - x dense ones.
Every expected number below is the rule of the module docstring written out by hand.
"""
import pytest

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.model.flops import param_counts
from pipeline.model.memory import (Layout, bytes_per_parameter, deepspeed_buffer_bytes, memory_breakdown,
                                   per_rank_bytes)

TINY = load_model_config("configs/model/tiny-olmoe-oe.yaml")
C = param_counts(TINY)
N, T, X = C["total"], C["oe_tables"], C["experts"]
REST = N - T - X


def test_fp32_zero0_one_rank_is_16_bytes_per_parameter():
    m = per_rank_bytes(TINY, Layout(), "fp32", 0)
    assert (m["params"], m["grads"], m["optimizer"], m["master"]) == (4 * N, 4 * N, 8 * N, 0)
    assert m["held"] == 12 * N and m["total"] == 16 * N      # the gradient lives from backward to step


def test_bf16_zero2_dp2_autocast_over_fp32_storage():
    m = per_rank_bytes(TINY, Layout(dp=2), "bf16", 2)
    engine = REST + X                                          # ep = 1: experts are inside DeepSpeed
    assert m["params"] == 4 * engine + 4 * T // 2              # fp32 weights; table rows split over dp
    assert m["master"] == 4 * engine // 2                      # ZeRO-2's fp32 clone of its partition
    assert m["optimizer"] == 8 * engine // 2 + 8 * T // 2      # Adam m, v partitioned; table state local
    assert m["grads"] == 4 * engine // 2 + 4 * T // 2          # partitioned buffer; dense table gradient
    assert m["bf16_copies"] == 2 * engine                      # autocast casts, saved for the backward
    assert m["held"] == 4 * engine + 6 * engine + 12 * T // 2
    assert m["total"] == m["held"] + m["grads"] + m["bf16_copies"]


def test_expert_shards_outside_deepspeed_are_never_partitioned():
    k = memory_breakdown(TINY, Layout(dp=2, ep=2), "bf16", 1)["experts"]
    assert k["params"] == X / 2 and k["placement"] == "outside deepspeed"
    assert k["bytes_per_param"] == {"weights": 4, "master": 0, "optimizer": 8, "grad_accum": 0, "grads": 4,
                                    "bf16_copies": 2}
    assert (k["held_bytes"], k["peak_bytes"]) == (12 * X / 2, 18 * X / 2)


def test_zero3_partitions_weights_but_not_the_autocast_copies():
    per = bytes_per_parameter("engine", "bf16", 3, replicas=4)
    assert per == {"weights": 1, "master": 1, "optimizer": 2, "grad_accum": 0, "grads": 1, "bf16_copies": 2}
    held = bytes_per_parameter("engine", "bf16", 3, replicas=4, held_only=True)
    assert held["grads"] == 1 and held["bf16_copies"] == 0    # ZeRO-3's gradient partition is persistent
    assert deepspeed_buffer_bytes(3) == 2 * 10**9              # reduce bucket: 5e8 fp32 elements
    assert deepspeed_buffer_bytes(3, {"reduce_bucket_size": 1000}, "bf16-master-weights") == 2000
    assert deepspeed_buffer_bytes(2) == deepspeed_buffer_bytes(3, {"contiguous_gradients": False}) == 0


def test_bf16_master_weights_rule_for_comparison():
    per = bytes_per_parameter("engine", "bf16-master-weights", 1, replicas=2)
    assert per == {"weights": 2, "master": 2, "optimizer": 4, "grad_accum": 4, "grads": 2, "bf16_copies": 0}


def test_row_sparse_table_gradient_is_bounded_by_the_step_tokens():
    width = TINY.d_model // TINY.over_encoding.num_tables          # 16
    k = memory_breakdown(TINY, Layout(dp=2), "bf16", 2, "row_sparse_adam", tokens_per_rank_step=100)["oe_tables"]
    assert k["bytes_per_param"]["grads"] == 0
    assert k["sparse_grad_bytes"] == 100 * 4 * (4 * width + 8)     # 100 tokens x 4 tables x (values + index)
    assert k["peak_bytes"] == k["held_bytes"] + k["sparse_grad_bytes"] == 12 * T / 2 + 100 * 4 * 72
    huge = memory_breakdown(TINY, Layout(), "bf16", 0, "row_sparse_adam", tokens_per_rank_step=10**9)
    assert huge["oe_tables"]["sparse_grad_bytes"] == T / width * (4 * width + 8)   # capped by the local rows


def test_bad_precision_and_stage_are_one_line_errors():
    with pytest.raises(ConfigError, match="precision: 'fp16'"):
        per_rank_bytes(TINY, Layout(), "fp16")
    with pytest.raises(ConfigError, match="zero_stage: 4"):
        per_rank_bytes(TINY, Layout(), "bf16", 4)
