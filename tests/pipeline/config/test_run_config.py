"""The run config: exact error text, derived defaults filled by resolve (not by validate), model references
read before `model.x=...` overrides, and the task names eval.downstream_tasks accepts."""
from pathlib import Path

import pytest

from pipeline.config.base import ConfigError, parse_yaml, validate_tree
from pipeline.config.run import EVAL_TASKS, RunConfig, load_run_config, run_config_to_yaml

REPO = Path(__file__).resolve().parents[3]
TINY_RUN = REPO / "configs" / "run" / "tiny-cpu.yaml"
BASE = ["data.path=/nonexistent/shards", "run_dir=/nonexistent/run"]


def load(*overrides):
    return load_run_config(TINY_RUN, [*BASE, *overrides])


@pytest.mark.parametrize("override,message", [
    ("train.max_steps=0", "train.max_steps: must be >= 1, got 0"),
    ("train.global_batch_size=5", "train.global_batch_size: 5 is not a multiple of train.micro_batch_size=2"),
    ("schedule.decay_steps=0", "schedule.decay_steps: must be >= 1, got 0"),
    ("eval.downstream_limit=0", "eval.downstream_limit: must be >= 1 or null, got 0"),
    ("parallel.tp=0", "parallel.tp: must be >= 1 (got 0)"),
    ("run_dir=", "run_dir: is required"),
    # model checks name keys as in a model YAML (no `model.`), as they always have
    ("model.n_heads=3", "n_heads: d_model 64 is not divisible by n_heads 3"),
    ("model.over_encoding.n=1", "over_encoding.n: must be >= 2 (got 1)"),
    ("model.over_encoding.m=512", "over_encoding.m: table 0 modulus m+2t=512 is a multiple of vocab_size=512; "
                                  "n-gram ids would collapse (choose another m)"),
])
def test_error_text(override, message):
    with pytest.raises(ConfigError) as e:
        load(override)
    assert str(e.value) == message


def test_ep_with_zero3_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^parallel\.ep: .*zero_stage=3"):
        load("parallel.ep=2", "deepspeed.zero_stage=3")


def test_decay_steps_resolved_by_the_loader_and_saved_resolved():
    cfg = load("train.max_steps=33")
    assert cfg.schedule.decay_steps == 33
    assert parse_yaml(run_config_to_yaml(cfg))["schedule"]["decay_steps"] == 33
    assert load("train.max_steps=33", "schedule.decay_steps=7").schedule.decay_steps == 7


def test_validate_only_checks():
    cfg = load()
    cfg.schedule.decay_steps = None
    validate_tree(cfg)
    assert cfg.schedule.decay_steps is None
    cfg.resolve()
    assert cfg.schedule.decay_steps == cfg.train.max_steps
    assert isinstance(cfg, RunConfig)


def test_model_reference_then_overrides_in_order():
    cfg = load("model=configs/model/tiny-dense.yaml", "model.n_layers=2")
    assert cfg.model.mlp == "dense" and cfg.model.n_layers == 2
    # a later reference replaces the whole model section, earlier overrides included
    cfg = load("model.n_layers=3", "model=configs/model/tiny-dense.yaml")
    assert cfg.model.mlp == "dense" and cfg.model.n_layers != 3


def test_downstream_task_names():
    assert set(EVAL_TASKS) == {"piqa", "hellaswag", "arc_easy", "arc_challenge", "mmlu_var", "sciq", "openbookqa"}
    assert load("eval.downstream_every=5", "eval.downstream_tasks=[sciq, openbookqa]").eval.downstream_tasks == [
        "sciq", "openbookqa"]
    with pytest.raises(ConfigError) as e:
        load("eval.downstream_every=5", "eval.downstream_tasks=[nope]")
    assert str(e.value) == ("eval.downstream_tasks: unknown task 'nope' (allowed: arc_challenge, arc_easy, "
                            "hellaswag, mmlu_var, openbookqa, piqa, sciq)")
