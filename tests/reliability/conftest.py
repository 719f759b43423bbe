"""Shared fixtures: one tiny shard folder and one uninterrupted reference run for the whole suite."""
from __future__ import annotations

import pytest

from tests.pipeline.train.runs import make_shards
from tests.pipeline.train.test_resume import args as resume_args
from tests.reliability.faults import drive

# Checkpoints every 2 of 8 steps: a fault around the step-4 save leaves step_2 to resume from.
EVERY = "checkpoint.every=2"


def run_args(shards, run_dir, *extra) -> list[str]:
    return resume_args(shards, run_dir, EVERY, *extra)


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("reliability") / "shards")


@pytest.fixture(scope="session")
def straight_run(shards, tmp_path_factory):
    """8 uninterrupted steps at world size 1: the reference history every resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = drive(run_args(shards, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
