"""Learning-rate schedules (pipeline/train/lr_schedule.py): the exact curves of wsd, inv_sqrt and a cooldown
added to any kind, their config validation, the rules for a cooldown started on resume, and a real tiny run
trained with wsd to step 4 then cooled down from that checkpoint (the logged lr follows the formula).
(Warm-up, cosine and linear: tests/pipeline/train/test_components.py.)"""
from __future__ import annotations

import math

import pytest

from pipeline.config.base import ConfigError
from pipeline.config.run import ScheduleConfig, load_run_config
from pipeline.train.lr_schedule import check_resume_cooldown, lr_factor
from tests.pipeline.train.runs import TINY_RUN, launch, make_shards, read_metrics

PEAK = 3e-3   # optim.lr of tiny-cpu.yaml (warmup_steps 3, min_lr_ratio 0.1, max_steps 10)


def load(*overrides):
    return load_run_config(TINY_RUN, ["data.path=/nonexistent", *overrides])


def factors(cfg: ScheduleConfig, steps) -> list[float]:
    return [lr_factor(k, cfg) for k in steps]


def one_minus_sqrt(floor: float, p: float) -> float:
    return floor + (1 - floor) * (1 - math.sqrt(p))


def test_wsd_warms_up_stays_at_the_peak_then_cools_down():
    s = ScheduleConfig(kind="wsd", warmup_steps=10, decay_steps=100, cooldown_steps=20, min_lr_ratio=0.1,
                       cooldown_shape="1-sqrt")
    assert s.cooldown_window() == (80, 20)
    assert factors(s, [0, 4, 9]) == pytest.approx([0.1, 0.5, 1.0])
    assert factors(s, [10, 50, 79, 80]) == [1.0] * 4                  # stable, and the first cooldown update
    assert factors(s, [85, 90, 99]) == pytest.approx([one_minus_sqrt(0.1, p) for p in (0.25, 0.5, 0.95)])
    assert lr_factor(85, s) == pytest.approx(0.55)                    # 0.1 + 0.9 * (1 - sqrt(1/4))
    assert factors(s, [100, 1000]) == pytest.approx([0.1, 0.1])
    lin = ScheduleConfig(kind="wsd", warmup_steps=10, decay_steps=100, cooldown_steps=20, min_lr_ratio=0.0,
                         cooldown_shape="linear")
    assert factors(lin, [80, 85, 90, 95, 100]) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_inverse_square_root_is_continuous_at_the_peak_and_floored():
    s = ScheduleConfig(kind="inv_sqrt", warmup_steps=4, min_lr_ratio=0.1)
    # n = k + 1: n / 4 up to n = 4, then sqrt(4 / n)
    assert factors(s, [0, 2, 3]) == pytest.approx([0.25, 0.75, 1.0])
    assert factors(s, [4, 8, 15, 63]) == pytest.approx([math.sqrt(4 / 5), math.sqrt(4 / 9), 0.5, 0.25])
    assert factors(s, [399, 400, 10**6]) == pytest.approx([0.1, 0.1, 0.1])   # sqrt(4/400) = 0.1: the floor
    bare = ScheduleConfig(kind="inv_sqrt", warmup_steps=4, min_lr_ratio=0.0)
    assert lr_factor(1599, bare) == pytest.approx(0.05)


def test_a_cooldown_added_to_any_kind_starts_from_its_curve():
    cos = ScheduleConfig(kind="cosine", warmup_steps=10, decay_steps=110, min_lr_ratio=0.1,
                         cooldown_start_step=60, cooldown_steps=10, cooldown_shape="linear")
    plain = ScheduleConfig(kind="cosine", warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    assert factors(cos, range(60)) == factors(plain, range(60))
    assert lr_factor(60, cos) == pytest.approx(0.55)                  # the cosine's own value at step 60
    assert factors(cos, [65, 70, 100]) == pytest.approx([0.1 + 0.45 * 0.5, 0.1, 0.1])
    inv = ScheduleConfig(kind="inv_sqrt", warmup_steps=4, min_lr_ratio=0.0, cooldown_start_step=15,
                         cooldown_steps=4, cooldown_shape="1-sqrt")
    assert factors(inv, [15, 16, 19, 30]) == pytest.approx([0.5, 0.5 * (1 - math.sqrt(0.25)), 0.0, 0.0])


def test_defaults_are_resolved_and_saved():
    wsd = load("schedule.kind=wsd", "schedule.cooldown_steps=4").schedule
    assert (wsd.decay_steps, wsd.cooldown_shape, wsd.cooldown_window()) == (10, "1-sqrt", (6, 4))
    branch = load("schedule.kind=wsd", "schedule.cooldown_start_step=5", "schedule.cooldown_steps=3").schedule
    assert (branch.decay_steps, branch.cooldown_window()) == (8, (5, 3))
    for kind in ("constant", "inv_sqrt"):
        s = load(f"schedule.kind={kind}").schedule
        assert s.decay_steps is None and s.cooldown_shape is None and s.cooldown_window() is None
    cos = load("schedule.cooldown_start_step=5", "schedule.cooldown_steps=2", "schedule.cooldown_shape=linear")
    assert cos.schedule.cooldown_window() == (5, 2) and cos.schedule.decay_steps == 10


@pytest.mark.parametrize("overrides,error", [
    (["schedule.kind=wsd"], "schedule.cooldown_steps: kind=wsd needs the length of its cooldown"),
    (["schedule.kind=wsd", "schedule.cooldown_steps=0"], "schedule.cooldown_steps: must be >= 1, got 0"),
    (["schedule.cooldown_steps=3"],
     "schedule.cooldown_steps: with kind=cosine a cooldown also needs schedule.cooldown_start_step"),
    (["schedule.cooldown_start_step=5"], "schedule.cooldown_start_step: needs schedule.cooldown_steps"),
    (["schedule.cooldown_shape=linear"], "schedule.cooldown_shape: there is no cooldown to shape"),
    (["schedule.kind=wsd", "schedule.cooldown_steps=9"],
     "schedule.cooldown_steps: the cooldown would start at step 1, before the end of the warm-up"),
    (["schedule.cooldown_start_step=2", "schedule.cooldown_steps=3"],
     "schedule.cooldown_start_step: the cooldown would start at step 2, before the end of the warm-up"),
    (["schedule.kind=wsd", "schedule.cooldown_start_step=4", "schedule.cooldown_steps=3", "schedule.decay_steps=10"],
     "schedule.decay_steps: 10, but the cooldown ends at cooldown_start_step + cooldown_steps = 7"),
    (["schedule.cooldown_start_step=10", "schedule.cooldown_steps=2"],
     "schedule.cooldown_start_step: 10 is at or after decay_steps=10"),
    (["schedule.kind=constant", "schedule.decay_steps=5"], "schedule.decay_steps: kind=constant has no decay"),
    (["schedule.kind=inv_sqrt", "schedule.decay_steps=5"], "schedule.decay_steps: kind=inv_sqrt has no decay"),
    (["schedule.kind=inv_sqrt", "schedule.warmup_steps=0"], "schedule.warmup_steps: kind=inv_sqrt needs"),
    (["schedule.kind=wsd", "schedule.cooldown_steps=3", "schedule.cooldown_shape=sqrt"],
     "schedule.cooldown_shape: 'sqrt' does not match"),
])
def test_schedule_errors_name_the_key(overrides, error):
    with pytest.raises(ConfigError) as e:
        load(*overrides)
    assert error in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_cooldown_on_resume_must_continue_the_checkpoint_lr():
    wsd = load("schedule.kind=wsd", "schedule.cooldown_steps=4").schedule            # cooldown at 6-10
    branch = load("schedule.kind=wsd", "schedule.cooldown_start_step=5", "schedule.cooldown_steps=3",
                  "train.max_steps=8").schedule
    assert check_resume_cooldown(wsd, PEAK, branch, PEAK, 5, "ckpt") == \
        "cooldown over steps 6-8 (1-sqrt): lr 0.003 down to 0.0003"
    assert check_resume_cooldown(branch, PEAK, branch, PEAK, 7, "ckpt") is None   # resuming the branch itself
    with pytest.raises(ConfigError, match=r"^schedule\.cooldown_start_step: the cooldown would start at step 5, "
                                          r"before the step 6 of ckpt, which was trained without it"):
        check_resume_cooldown(wsd, PEAK, branch, PEAK, 6, "ckpt")
    with pytest.raises(ConfigError, match=r"gives the next update \(step 6\) lr 0\.006 where the checkpoint's "
                                          r"schedule gives 0\.003: set optim\.lr=0\.003 as in the checkpoint"):
        check_resume_cooldown(wsd, PEAK, branch, 2 * PEAK, 5, "ckpt")
    # A cosine run of 100 steps branched at 50: the default decay end would move to 60 with train.max_steps.
    cosine = load("train.max_steps=100").schedule
    moved = load("train.max_steps=60", "schedule.cooldown_start_step=50", "schedule.cooldown_steps=10").schedule
    with pytest.raises(ConfigError, match=r"set schedule\.decay_steps=100 as in the checkpoint$"):
        check_resume_cooldown(cosine, PEAK, moved, PEAK, 50, "ckpt")
    kept = load("train.max_steps=60", "schedule.decay_steps=100", "schedule.cooldown_start_step=50",
                "schedule.cooldown_steps=10").schedule
    assert check_resume_cooldown(cosine, PEAK, kept, PEAK, 50, "ckpt").startswith("cooldown over steps 51-60")
    # Inside the checkpoint's own cooldown, a new cooldown (from the stable peak) does not continue its lr.
    with pytest.raises(ConfigError, match=r"the checkpoint is in its own cooldown there$"):
        check_resume_cooldown(wsd, PEAK, load("schedule.kind=wsd", "schedule.cooldown_start_step=7",
                                              "schedule.cooldown_steps=3").schedule, PEAK, 7, "ckpt")


def test_wsd_run_then_a_cooldown_from_its_checkpoint(tmp_path):
    from pipeline.train.resume import admissible

    shards = make_shards(tmp_path / "shards")
    common = ["--config", str(TINY_RUN), f"data.path={shards}", "log.tensorboard=false", "eval.every=0",
              "eval.at_end=false", "schedule.kind=wsd"]
    main, branch = tmp_path / "main", tmp_path / "branch"
    # The main run: wsd over 10 steps (cooldown 7-10), stopped with a checkpoint at step 4 in its stable phase.
    launch(common + [f"run_dir={main}", "schedule.cooldown_steps=3", "train.hard_stop_step=4",
                     "checkpoint.every=4"], launcher="python")
    ckpt = main / "checkpoints" / "step_4"
    cooldown = ["schedule.cooldown_start_step=4", "schedule.cooldown_steps=4", "train.max_steps=8"]
    proc = launch(common + [f"run_dir={branch}", f"train.resume={ckpt}", *cooldown], launcher="python")
    assert "changed on resume: schedule.cooldown_start_step null -> 4" in proc.stdout, proc.stdout[-3000:]
    assert "changed on resume: cooldown over steps 5-8 (1-sqrt): lr 0.003 down to 0.0003" in proc.stdout

    main_lr = {r["step"]: r["lr"] for r in read_metrics(main)}
    assert list(main_lr.values()) == pytest.approx([PEAK / 3, 2 * PEAK / 3, PEAK, PEAK], rel=1e-12)
    lr = {r["step"]: r["lr"] for r in read_metrics(branch)}
    # logged step s is update k = s - 1; the cooldown's first update (k = 4) keeps the step-4 peak
    assert sorted(lr) == [5, 6, 7, 8]
    assert [lr[s] for s in (5, 6, 7, 8)] == pytest.approx(
        [PEAK * one_minus_sqrt(0.1, (s - 5) / 4) for s in (5, 6, 7, 8)], rel=1e-12)
    assert lr[5] == main_lr[4] and lr[5] > lr[6] > lr[7] > lr[8] > 0.1 * PEAK

    # The same branch started before the checkpoint's step is refused before any training.
    early = load(f"data.path={shards}", f"run_dir={tmp_path / 'early'}", "schedule.kind=wsd", f"train.resume={ckpt}",
                 "schedule.cooldown_start_step=3", "schedule.cooldown_steps=5", "train.max_steps=8")
    with pytest.raises(ConfigError, match=r"^schedule\.cooldown_start_step: the cooldown would start at step 3, "
                                          r"before the step 4 of .*step_4"):
        admissible(ckpt, early, world=1)
