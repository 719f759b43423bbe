"""The inspector's scale section: placement, bytes per collective and step time at full scale, and the dry run of
the trainer's real parallelize step at 32 and 256 ranks under torch's fake process group on meta tensors.
(The byte model against a real training step: tests/pipeline/parallel/test_comm_bytes.py.)"""
from __future__ import annotations

import json
import math

import pytest

from launch.inspect_model import load_inspected_run, main
from pipeline.config.base import ConfigError
from pipeline.model import build_model
from pipeline.model.comm_model import StepShape, step_collectives
from pipeline.model.memory import Layout
from pipeline.model.placement import rank_placement
from pipeline.model.step_time import Cluster, collective_seconds
from pipeline.train.dry_run import built_rank, compare, dry_run

RUN_13B = "configs/run/olmoe-1.3b-ot12.8m-32gpu.yaml"
RUN_7B = "configs/run/olmoe-7b-oe12.8m-ep8.yaml"


@pytest.mark.parametrize("path, world, ranks, overrides", [
    (RUN_13B, 32, [0, 7, 8, 31], []),                                   # ep 8 inside a node, OE over 32
    (RUN_7B, 256, [0, 1, 129, 255], []),                                # 32 nodes
    (RUN_13B, 32, [0, 1, 31], ["parallel.ep=1", "parallel.tp=2"]),      # megatron-core TP layers on meta
    (RUN_13B, 32, [3, 31], ["parallel.ep=1", "parallel.tp=4", "parallel.oe_shard_group=world"]),
])
def test_dry_run_builds_what_the_inspector_places(path, world, ranks, overrides):
    cfg = load_inspected_run(path, overrides)
    report = dry_run(cfg, world, ranks)
    assert report["mismatches"] == {} and report["ranks_checked"] == len(ranks)
    assert any("deepspeed.initialize" in line for line in report["skipped"])
    last = report["ranks"][str(ranks[-1])]
    oe = cfg.model.over_encoding
    assert last["oe_rows"][1] == last["oe_rows"][2] == sum(oe.moduli())       # the last rank ends the table
    if cfg.parallel.ep > 1:
        per = cfg.model.n_experts // cfg.parallel.ep
        assert last["experts"] == [(ranks[-1] % cfg.parallel.ep) * per, (ranks[-1] % cfg.parallel.ep + 1) * per,
                                   cfg.model.n_experts]


def test_compare_sees_a_wrong_placement():
    """Negative control: rank 9's build against rank 1's prediction (other OE rows, same experts) and against a
    prediction with another ep (other experts, other groups) both disagree."""
    cfg = load_inspected_run(RUN_13B, [])
    model = build_model(cfg.model, device="meta", seed=0)
    built = built_rank(cfg, 32, 9)
    assert compare(built, rank_placement(model, Layout(dp=32, ep=8), 9)) == []
    wrong_rank = compare(built, rank_placement(model, Layout(dp=32, ep=8), 1))
    assert any(line.startswith("over_encoding.table: shard") for line in wrong_rank), wrong_rank
    assert not any("experts" in line for line in wrong_rank)
    wrong_ep = compare(built, rank_placement(model, Layout(dp=32, ep=4), 9))
    assert any("experts.w_up: shape" in line for line in wrong_ep) and any("group ep" in line for line in wrong_ep)


def test_bytes_at_full_scale_by_hand():
    """OLMoE-1.3B + OE-12.8M (no MTP) on 32 GPUs, ep 8, ZeRO-2, bf16, 8 micro-batches of 4 x 4096 tokens."""
    cfg = load_inspected_run(RUN_13B, ["model.over_decoding.mode=none"]).model
    t, a, n = 4 * 4096, 8, 155_239_424
    c = {(x.family, x.name): x for x in step_collectives(cfg, Layout(dp=32, ep=8), StepShape(4, 4096, a), [n],
                                                         zero_stage=2, precision="bf16")}
    assert c["oe", "ids"].payload == a * t * 4 * 4                       # 4 tables, int32 rows (R < 2^31)
    assert c["oe", "vectors"].payload == a * t * 4 * 256 * 2             # width 256, bf16
    assert c["oe", "row gradients"].payload == a * t * 4 * 256 * 4       # fp32
    assert c["ep", "dispatch + combine"].payload == 2 * a * 12 * t * 8 * 1024 * 2
    assert c["external", "expert gradients"].payload == 12 * 64 * 3 * 1024 * 512 / 8 * 4
    assert c["zero", "gradient all-reduce"].payload == a * n * 4 and c["zero", "gradient all-reduce"].calls == a
    assert c["zero", "parameter all-gather"].payload == n / 32 * 4
    zero1 = {x.name: x for x in step_collectives(cfg, Layout(dp=32, ep=8), StepShape(4, 4096, a), [n],
                                                 zero_stage=1, precision="bf16") if x.family == "zero"}
    assert zero1["gradient all-reduce"].payload == n * 4                 # once per step, not per micro-batch
    # the ring over 32 ranks on 4 nodes runs at the NIC's bandwidth; 8 ranks of one node at NVLink's
    cl = Cluster()
    assert collective_seconds("all_reduce", 1, 1e9, 2e9 * 31 / 32, list(range(32)), 0, cl) == pytest.approx(
        2e9 * 31 / 32 / 50e9 + 62 * 1e-5)
    assert collective_seconds("all_to_all_single", 1, 8e9, 7e9, list(range(8)), 0, cl) == pytest.approx(
        8e9 * 7 / 8 / 450e9 + 7 * 5e-6)


def test_cli_scale_section_and_dry_run(capsys):
    assert main(["--run-config", RUN_7B, "--world", "32", "--ranks", "0,31", "--dry-run", "--json",
                 "--cluster", "inter_bw=25e9,mfu=0.3"]) == 0
    r = json.loads(capsys.readouterr().out)
    s = r["scale"]
    assert s["cluster"]["inter_bw"] == 25e9 and s["cluster"]["mfu"] == 0.3
    assert set(s["families"]) == {"oe", "ep", "external", "zero"}
    st = s["step_time"]
    flops = r["training_flops_per_token"] * 2 * 4096 * 16                # 16 micro-batches of 2 x 4096 per GPU
    assert st["compute_s"] == pytest.approx(flops / (989e12 * 0.3))
    assert st["total_s"] == pytest.approx(st["compute_s"] + st["comm_s"])
    assert r["dry_run"]["mismatches"] == {} and r["dry_run"]["ranks_checked"] == 2
    assert s["placement"]["31"]["coords"] == {"rank": 31, "tp_rank": 0, "dp_rank": 31, "ep_rank": 7, "edp_rank": 3,
                                              "node_rank": 3}
    assert math.isclose(sum(p["shape"][0] for n, p in s["placement"]["0"]["params"].items() if n.endswith("w_up")),
                        8 * 16)                                          # 8 experts x 16 layers on rank 0
    for argv, key in ((["--config", "configs/model/tiny-olmoe-oe.yaml", "--dry-run"], "--dry-run"),
                      (["--run-config", RUN_7B, "--world", "32", "--cluster", "nvlink=1"], "--cluster"),
                      (["--run-config", RUN_7B, "--world", "32", "--ranks", "32"], "--ranks"),
                      (["--run-config", RUN_7B, "--world", "32", "--micro-batch", "2"], "--micro-batch"),
                      (["--config", "configs/model/tiny-olmoe-oe.yaml", "--layout", "dp=2", "--oe-unique", "2"],
                       "--oe-unique")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and key in err, err


def test_cluster_parse_errors():
    with pytest.raises(ConfigError, match="--cluster mfu"):
        Cluster.parse(["mfu=abc"])
    with pytest.raises(ConfigError, match="--cluster overlap"):
        Cluster.parse(["overlap=2"])
    assert Cluster.parse(["gpus_per_node=4,overlap=0.5"]) == Cluster(gpus_per_node=4, overlap=0.5)
