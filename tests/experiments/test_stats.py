"""experiments.stats (seed-paired t-test) and the verdict rule of experiments.summary."""
import pytest
from scipy import stats as scipy_stats

from experiments.stats import paired, t_test
from experiments.summary import _verdict


def _results(a: list[float], b: list[float]) -> dict:
    return {"runs": {"a": [{"seed": s, "final_val_loss": x} for s, x in enumerate(a)],
                     "b": [{"seed": s, "final_val_loss": x} for s, x in enumerate(b)]}}


def test_paired_equals_scipy_ttest_rel():
    a, b = [3.40, 3.41, 3.39, 3.42, 3.40], [3.60, 3.58, 3.61, 3.59, 3.62]
    r = paired(_results(a, b), "a", "b")
    ref = scipy_stats.ttest_rel(a, b)
    assert r.n == 5 and r.mean == pytest.approx(sum(a) / 5 - sum(b) / 5)
    assert r.t == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)


def test_paired_uses_only_the_seeds_both_variants_ran():
    d = _results([1.0, 2.0, 3.0], [0.5, 1.0])
    assert paired(d, "a", "b").n == 2


def test_t_is_undefined_without_spread_or_a_second_seed():
    assert t_test(0.1, 0.0, 5).t is None and t_test(0.1, 0.2, 1).p is None


def test_verdict_needs_the_papers_sign_and_p_below_005():
    assert _verdict(t_test(-0.2, 0.02, 5), want_negative=True) == "reproduced"
    assert _verdict(t_test(-0.01, 0.05, 3), want_negative=True) == "direction only"
    assert _verdict(t_test(0.2, 0.02, 5), want_negative=True) == "not reproduced"
    assert _verdict(t_test(0.06, 0.003, 3), want_negative=False) == "reproduced"
