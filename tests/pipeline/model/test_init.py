"""Counter-based initialisation (pipeline/model/init.py): values depend on (seed, name, position) only, any
range of a parameter is generated from just its blocks and equals the same range of the whole parameter,
no temporary exceeds one block, and a meta-built model materialised later equals a directly built one."""
from __future__ import annotations

import pytest
import torch

from pipeline.config.model import load_model_config
from pipeline.model import build_model
from pipeline.model import init as init_mod
from pipeline.model.init import InitSpec, Shard, fill_flat_range, init_parameter, materialize

SPEC = InitSpec("trunc_normal", 0.02)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1000 elements, so ranges cross several blocks and cut them anywhere."""
    monkeypatch.setattr(init_mod, "BLOCK", 1000)
    sizes = []
    real = init_mod._block_values
    monkeypatch.setattr(init_mod, "_block_values",
                        lambda *a: sizes.append(a[-1]) or real(*a))
    return sizes


def full(shape, name="w", seed=3):
    out = torch.empty(shape)
    init_parameter(out, name, SPEC, seed)
    return out


def test_any_row_range_equals_the_same_rows_of_the_whole(small_blocks):
    whole = full((997, 7))                      # 6979 elements: 7 blocks, the last one short
    for start, end in [(0, 997), (0, 1), (142, 143), (142, 600), (285, 997), (996, 997), (3, 286)]:
        part = torch.empty(end - start, 7)
        init_parameter(part, "w", SPEC, 3, Shard(0, start, (997, 7)))
        assert torch.equal(part, whole[start:end]), (start, end)
    assert max(small_blocks) <= 1000          # never a temporary larger than one block


def test_a_range_generates_only_its_blocks(small_blocks):
    small_blocks.clear()
    part = torch.empty(10, 7)                   # elements [2100, 2170) -> block 2 only
    init_parameter(part, "w", SPEC, 3, Shard(0, 300, (997, 7)))
    assert small_blocks == [1000]


def test_values_depend_on_seed_and_name_and_are_truncated_normal():
    a, b, c = full((600, 1000)), full((600, 1000), name="v"), full((600, 1000), seed=4)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, full((600, 1000)))
    assert a.abs().max() <= 0.06 + 1e-7
    # N(0, 0.02) truncated at 3 std has std 0.02 * 0.98658
    assert abs(a.std().item() - 0.02 * 0.98658) < 2e-5 and abs(a.mean().item()) < 1e-4


def test_other_dims_slice_the_full_layer_and_dtype_and_device_do_not_matter(small_blocks):
    whole = full((40, 60))
    part = torch.empty(40, 20, dtype=torch.float64)
    init_parameter(part, "w", SPEC, 3, Shard(1, 20, (40, 60)))
    assert torch.equal(part, whole[:, 20:40].double())


def test_ones_and_unknown_kind():
    x = torch.zeros(5)
    fill_flat_range(x, InitSpec("ones"), 0, "n", 0, 5)
    assert torch.equal(x, torch.ones(5))
    with pytest.raises(ValueError, match="unknown init kind"):
        fill_flat_range(x, InitSpec("xavier"), 0, "n", 0, 5)


def test_meta_build_materialised_equals_direct_build_and_keeps_marks():
    cfg = load_model_config("configs/model/tiny-olmoe-ot.yaml", [])
    direct = build_model(cfg, seed=11)
    meta = build_model(cfg, device="meta", seed=11)
    assert all(p.is_meta for p in meta.parameters())
    materialize(meta, "cpu")
    meta.init_weights()
    want = dict(direct.named_parameters())
    for name, p in meta.named_parameters():
        assert torch.equal(p, want[name]), name
    assert meta.over_encoding.table._oe_table and meta.layers[0].mlp.experts.w_gate._moe_expert
    assert torch.equal(meta.over_encoding.row_offsets, direct.over_encoding.row_offsets)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    assert torch.equal(meta(ids).loss, direct(ids).loss)


def test_global_seed_fixes_the_model():
    cfg = load_model_config("configs/model/tiny-olmoe.yaml", [])
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg)                        # the generator moved on: another model
    torch.manual_seed(0)
    c = build_model(cfg)
    assert a.init_seed == c.init_seed != b.init_seed
    assert torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_block_bound():
    assert init_mod.BLOCK * 4 <= 4 * 2**20     # the largest temporary of the init: one fp32 block


def test_startup_peak_estimate_is_held_state_plus_one_block():
    from pipeline.model.memory import INIT_BLOCK_BYTES, Layout, per_rank_bytes
    cfg = load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml", [])
    zero0 = per_rank_bytes(cfg, Layout(dp=32), "bf16", 0)
    assert abs(zero0["startup_peak"] - zero0["held"] - INIT_BLOCK_BYTES) <= 1
    # ZeRO-2: DeepSpeed flattens the engine's weights once more at initialize, still below the training peak
    zero2 = per_rank_bytes(cfg, Layout(dp=32), "bf16", 2)
    assert zero2["held"] + INIT_BLOCK_BYTES < zero2["startup_peak"] < zero2["total"]
