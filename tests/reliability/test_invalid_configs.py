"""Invalid configurations: each ends launch/train.py with exit code 2 and ONE line naming the key and what
is allowed, before any process-group work (no group is created; a lone rank 1 whose rank 0 never comes
fails at once instead of waiting for the rendezvous)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from pipeline.config.base import ConfigError
from pipeline.config.model import load_model_config
from pipeline.config.parallel import ParallelConfig
from pipeline.parallel.process_groups import check_layout
from tests.helpers.multirank import REPO, free_port, rank_env
from tests.pipeline.train.runs import TINY_RUN

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
