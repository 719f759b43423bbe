"""Invalid configurations: each ends launch/train.py with exit code 2 and ONE line naming the key and what
is allowed, before any process-group work (no group is created; a lone rank 1 whose rank 0 never comes
fails at once instead of waiting for the rendezvous). Also the values that contradict each other or the
files they name (issue 14, class 6): max_seq_len below seq_len, a val_split the manifest does not have, a
DeepSpeed JSON of the wrong shape, a YAML or JSON key given twice."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.config.parallel import ParallelConfig
from pipeline.parallel.process_groups import check_layout
from pipeline.train.deepspeed_config import build_deepspeed_config
from tests.helpers.multirank import REPO, free_port, rank_env
from tests.pipeline.data.shard_fixture import random_documents, write_shard_folder
from tests.pipeline.train.runs import EOS, TINY_RUN, VOCAB, launch, tiny_config

# (override, key the message must name, what it must say is allowed / required)
CASES = [
    ("model.n_heads=3", "n_heads", "not divisible by n_heads 3"),
    ("model.over_encoding.k=3", "over_encoding.k", "not divisible by k(n-1) = 6"),
    ("model.over_encoding.m=512", "over_encoding.m", "multiple of vocab_size=512"),
    ("model.top_k=9", "top_k", "must be in [1, n_experts=8]"),
    ("model.d_model=0", "d_model", "must be >= 1"),
    ("model.n_layers=-2", "n_layers", "must be >= 1"),
    ("model.padded_vocab_size=100", "padded_vocab_size", "smaller than vocab_size 512"),
    ("model.mlp=sparse", "model.mlp", "allowed: 'moe', 'dense'"),
    ("model.over_encoding.n=1", "over_encoding.n", "must be >= 2"),
    ("model.over_decoding.mode=none", "over_decoding.mode", "allowed: mode mtp or product"),
    ("model.over_decoding.depth=0", "over_decoding.depth", "must be >= 1"),
    ("train.micro_batch_size=0", "train.micro_batch_size", "must be >= 1"),
    ("train.global_batch_size=5", "train.global_batch_size", "not a multiple of train.micro_batch_size=2"),
    ("train.max_steps=abc", "train.max_steps", "expected an integer"),
    ("train.max_step=5", "train.max_step", "allowed under train:"),
    ("colour=blue", "colour", "allowed under top level:"),
    ("train.max_bad_steps=0", "train.max_bad_steps", "must be >= 1"),
    ("data.seq_len=1", "data.seq_len", "must be >= 2"),
    ("data.verify=fast", "data.verify", "allowed: 'size', 'full'"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage", "allowed: 0, 1, 2, 3"),
    ("deepspeed.precision=fp16", "deepspeed.precision", "allowed: 'fp32', 'bf16'"),
    ("deepspeed.timeout_s=0", "deepspeed.timeout_s", "must be > 0"),
    ("optim.lr=-1e-3", "optim.lr", "must be > 0"),
    ("optim.betas=[0.9]", "optim.betas", "two numbers in [0, 1)"),
    ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio", "must be in [0, 1]"),
    ("schedule.kind=step", "schedule.kind", "allowed: 'cosine', 'linear', 'constant'"),
    ("log.tensorboard=maybe", "log.tensorboard", "expected true or false"),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last", "must be >= 0"),
    ("eval.batches=0", "eval.batches", "must be >= 1"),
    # sections that contradict each other (issue 14, class 6)
    ("model.max_seq_len=16", "data.seq_len", "32 exceeds model.max_seq_len=16"),
    ("data.val_split=null", "data.val_split", "eval.every and eval.at_end ask for validation"),
]
# The over_decoding.mode case sets depth on a config whose mode is none.
OVERRIDES = {"model.over_decoding.mode=none": ["model.over_decoding.mode=none", "model.over_decoding.depth=2"]}


def _train_cli():
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("override,key,allowed", CASES, ids=[c[0] for c in CASES])
def test_invalid_config_is_one_line_naming_key_before_any_process_group(override, key, allowed, capsys, tmp_path):
    argv = ["--config", str(TINY_RUN), f"data.path={tmp_path}", f"run_dir={tmp_path / 'run'}",
            *OVERRIDES.get(override, [override])]
    assert _train_cli().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    assert key in err and allowed in err, err
    assert not dist.is_initialized()          # no process group was ever created
    assert not (tmp_path / "run").exists()    # and nothing was written


def _lone_rank_error(tmp_path, world: int, override: str) -> str:
    """Rank 1 of `world` with a MASTER_ADDR/port where nobody listens (any rendezvous attempt would block):
    the run must end within seconds with exit code 2 and one line on stderr, which is returned."""
    env = rank_env(1, world, free_port())
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config", str(TINY_RUN),
                           f"data.path={tmp_path}", override], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and time.monotonic() - t0 < 30, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    return proc.stderr


def test_invalid_config_fails_fast_on_a_rank_whose_peers_never_come(tmp_path):
    assert "deepspeed.zero_stage" in _lone_rank_error(tmp_path, 2, "deepspeed.zero_stage=5")


def test_invalid_layout_fails_before_rendezvous(tmp_path):
    """A layout that cannot fit the launcher's world size (tp 3 on 4 ranks) fails before any rendezvous."""
    err = _lone_rank_error(tmp_path, 4, "parallel.tp=3")
    assert "parallel" in err and "tp" in err


MODEL = REPO / "configs" / "model" / "tiny-olmoe.yaml"   # d_model 64, 4 heads, 8 experts
LAYOUTS = [
    (dict(tp=3), 4, [], "parallel.tp: 3 does not divide the world size 4"),
    (dict(ep=3), 6, [], "parallel.ep: 3 does not divide n_experts 8"),
    (dict(ep=4), 6, [], "parallel.ep: 4 does not divide the data-parallel size 6"),
    (dict(tp=8), 8, [], "parallel.tp: 8 does not divide n_heads 4"),
    (dict(tp=2, ep=2), 4, [], "parallel.ep"),
    (dict(tp=0), 4, [], "parallel.tp: must be >= 1"),
    (dict(ep=2), 4, ["mlp=dense", "dense_hidden=128"], "parallel.ep: 2 > 1 needs an MoE model"),
]


@pytest.mark.parametrize("layout,world,model_overrides,message", LAYOUTS, ids=[m for *_, m in LAYOUTS])
def test_invalid_parallel_layouts_are_one_line_errors(layout, world, model_overrides, message):
    """check_layout needs only the world size (known from the launcher's environment) and the model."""
    with pytest.raises(ConfigError) as err:
        check_layout(ParallelConfig(**layout), world, load_model_config(MODEL, model_overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if "real_accelerator" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), text[-3000:]
    return lines[0]


def test_a_key_given_twice_in_a_yaml_file_is_one_line_naming_file_line_and_key(capsys, tmp_path):
    """PyYAML keeps the last of two equal keys without a word: an `lr:` added below an old one would win."""
    config = tmp_path / "run.yaml"
    config.write_text(f"base: {TINY_RUN}\nmodel: {REPO / 'configs/model/tiny-olmoe-ot.yaml'}\n"
                      "optim:\n  lr: 3.0e-3\n  weight_decay: 0.1\n  lr: 3.0e-2\n")
    argv = ["--config", str(config), f"data.path={tmp_path}", f"run_dir={tmp_path / 'run'}"]
    assert _train_cli().main(argv) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{config}:6: duplicate key 'lr' (first on line 4)" in err, err
    assert not dist.is_initialized() and not (tmp_path / "run").exists()


def test_a_val_split_the_manifest_lacks_stops_the_run_and_null_trains_without_validation(tmp_path):
    """Data prepared without a validation split (data_prep --val-fraction 0) and validation on: the run used
    to train without validating. Now exit 2 before step 1; saying so (val_split null, eval off) trains."""
    shards = write_shard_folder(tmp_path / "train_only", {"train": random_documents(300, VOCAB, EOS, seed=1)},
                                VOCAB, EOS)
    common = ["--config", str(TINY_RUN), f"data.path={shards}", f"run_dir={tmp_path / 'run'}", "train.max_steps=1",
              "log.tensorboard=false", "checkpoint.every=0", "checkpoint.save_at_end=false"]
    proc = launch(common, launcher="python", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = _one_line(proc.stderr)
    assert f"{shards / 'manifest.json'}: no shards for data.val_split='val' (splits here: train)" in err, err
    assert "data.val_split=null eval.every=0 eval.at_end=false" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    ok = launch(common + ["data.val_split=null", "eval.every=0", "eval.at_end=false"], launcher="python",
                check=False)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "no validation result" in ok.stdout


# DeepSpeed JSONs of the wrong shape: one line naming the file and the key (DeepSpeed itself raises a
# TypeError / pydantic ValidationError from deepspeed.initialize, or ignores an unknown top-level key)
DS_JSONS = [
    ({"fp16": True}, "fp16: must be a JSON object (a section), got true"),
    ({"zero_optimization": 2}, "zero_optimization: must be a JSON object (a section), got 2"),
    ({"zero_optimisation": {"stage": 0}}, "unknown key 'zero_optimisation'"),
    ({"zero_optimization": {"overlap_com": True}}, "zero_optimization.overlap_com: Extra inputs are not permitted"),
    ({"zero_optimization": {"stage": "two"}}, "zero_optimization.stage: Input should be 0, 1, 2"),
    ({"tensorboard": {"enabled": True, "output_dir": "tb"}}, "tensorboard.output_dir: Extra inputs are not permitted"),
    ({"activation_checkpointing": [1]}, "activation_checkpointing: must be a JSON object (a section), got [1]"),
]


@pytest.mark.parametrize("content,message", DS_JSONS, ids=[json.dumps(c) for c, _ in DS_JSONS])
def test_deepspeed_json_of_the_wrong_shape_is_one_line_naming_file_and_key(tmp_path, content, message):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        build_deepspeed_config(tiny_config(tmp_path, tmp_path / "run", f"deepspeed.config_file={user}"), 1)
    assert str(err.value).startswith(f"{user}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_deepspeed_json_key_given_twice_is_an_error(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"stage": 0}, "zero_optimization": {"stage": 2}}')
    with pytest.raises(ConfigError, match=r"ds.json: duplicate key 'zero_optimization'"):
        build_deepspeed_config(tiny_config(tmp_path, tmp_path / "run", f"deepspeed.config_file={user}"), 1)


def test_deepspeed_json_of_the_wrong_shape_stops_launch_with_one_line(tmp_path):
    """Through launch/train.py: exit 2 and one line, not an AttributeError traceback, nothing trained."""
    from tests.pipeline.train.runs import make_shards

    user = tmp_path / "ds.json"
    user.write_text('{"fp16": true}')
    proc = launch(["--config", str(TINY_RUN), f"data.path={make_shards(tmp_path / 'shards')}",
                   f"run_dir={tmp_path / 'run'}", f"deepspeed.config_file={user}"], launcher="python", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{user}: fp16: must be a JSON object" in _one_line(proc.stderr)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
