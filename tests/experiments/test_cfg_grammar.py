"""cfg3f generator and the level-restricted CYK checker (experiments/cfg)."""
import random
from functools import lru_cache

import pytest

from experiments.cfg.checker import is_valid
from experiments.cfg.grammar import LEVELS, MAX_LEN, MIN_LEN, ROOT, RULES, sample, sample_many, span_bounds


def reference_valid(x: list[int], root_level: int = 0) -> bool:
    """Plain top-down memoised parser, independent of the checker's banded charts. Its only pruning is
    the (provable) fact that a level-l symbol spans 2^(6-l) ... 3^(6-l) terminals."""
    n = len(x)
    level = {s: lv for lv, syms in enumerate(LEVELS) for s in syms}

    @lru_cache(maxsize=None)
    def derives(sym: int, i: int, j: int) -> bool:
        if sym in (1, 2, 3):
            return j == i + 1 and x[i] == sym
        lo, hi = span_bounds(level[sym])
        if not lo <= j - i <= hi:
            return False
        return any(seq_derives(rule, i, j) for rule in RULES[sym])

    @lru_cache(maxsize=None)
    def seq_derives(rule: tuple, i: int, j: int) -> bool:
        if len(rule) == 1:
            return derives(rule[0], i, j)
        return any(derives(rule[0], i, k) and seq_derives(rule[1:], k, j) for k in range(i + 1, j))

    roots = (ROOT,) if root_level == 0 else LEVELS[root_level]
    return any(derives(r, 0, n) for r in roots)


def test_rules_go_down_one_level_with_two_or_three_children():
    level = {s: l for l, syms in enumerate(LEVELS) for s in syms}
    for sym, rules in RULES.items():
        for rule in rules:
            assert len(rule) in (2, 3)
            assert all((level.get(c, 6) == level[sym] + 1) for c in rule), (sym, rule)


def test_known_lengths_and_terminals():
    xs = sample_many(300, seed=0)
    assert all(MIN_LEN <= len(x) <= MAX_LEN and set(x) <= {1, 2, 3} for x in xs)
    lengths = sorted(len(x) for x in xs)
    assert 200 <= lengths[len(lengths) // 2] <= 300              # the paper: median ~250
    assert span_bounds(0) == (64, 729) and span_bounds(5) == (2, 3)
    assert sample_many(3, seed=7) == sample_many(3, seed=7)       # seeded


def test_generated_strings_are_accepted():
    assert all(is_valid(x) for x in sample_many(100, seed=1))


@pytest.mark.parametrize("length", [0, 1, 63, 730])
def test_impossible_lengths_and_symbols_rejected(length):
    assert not is_valid([1] * length)
    x = sample(random.Random(0))
    assert not is_valid(x[:-1] + [0]) and not is_valid(x + [4])


def test_corruptions_agree_with_a_reference_parser():
    """Substitutions, deletions and insertions: most are rejected, and every verdict matches brute force."""
    rng = random.Random(3)
    rejected = 0
    cases = 0
    for x in sample_many(6, seed=2):
        for kind in ("sub", "del", "ins", "swap"):
            y = list(x)
            i = rng.randrange(len(y) - 1)
            if kind == "sub":
                y[i] = rng.choice([t for t in (1, 2, 3) if t != y[i]])
            elif kind == "del":
                del y[i]
            elif kind == "ins":
                y.insert(i, rng.choice((1, 2, 3)))
            else:
                y[i], y[i + 1] = y[i + 1], y[i]
            if y == x:
                continue
            verdict = is_valid(y)
            assert verdict == reference_valid(y), (kind, i)
            rejected += not verdict
            cases += 1
    assert rejected >= 0.7 * cases


def test_random_strings_rejected():
    rng = random.Random(5)
    for _ in range(20):
        y = [rng.choice((1, 2, 3)) for _ in range(rng.randrange(64, 300))]
        assert not is_valid(y)


def test_parse_depth_grades_partial_validity():
    from experiments.cfg.checker import parse_depth
    a, b = sample_many(2, seed=4)
    assert parse_depth(a) == 6
    assert parse_depth(a + b) == 5                 # two roots: a sequence of level-1 symbols, not one root
    assert parse_depth([1, 1, 1, 1]) == 1          # 9 9 (9 -> 1 1), but no level-4 rule is 9 9
    assert parse_depth([2, 2, 2, 2]) == 0          # no level-5 rule derives a prefix of 2 2 2 2
    assert parse_depth([]) == 0 and parse_depth([0, 1]) == 0


@pytest.mark.parametrize("root_level", [1, 2, 3])
def test_scaled_down_grammar_agrees_with_the_reference_parser(root_level):
    """The CPU-scale experiment's grammar (cfg3f's bottom 6 - root_level levels): samples are accepted, have the
    right lengths and full parse depth; corruptions and strings of the full grammar get the brute-force verdict."""
    from experiments.cfg.checker import parse_depth
    lo, hi = span_bounds(root_level)
    xs = sample_many(40, seed=9, root_level=root_level)
    assert all(lo <= len(x) <= hi for x in xs) and {x[0] for x in xs} <= {1, 2, 3}
    assert all(is_valid(x, root_level) and parse_depth(x, root_level) == 6 - root_level for x in xs)
    rng = random.Random(root_level)
    verdicts = []
    for x in xs[:15]:
        y = list(x)
        i = rng.randrange(len(y))
        y[i] = rng.choice([t for t in (1, 2, 3) if t != y[i]])
        verdicts.append(is_valid(y, root_level))
        assert verdicts[-1] == reference_valid(y, root_level)
        assert parse_depth(y, root_level) < 6 - root_level or verdicts[-1]
    assert sum(verdicts) <= 0.3 * len(verdicts)
    assert not is_valid(xs[0] + xs[1], root_level) or reference_valid(xs[0] + xs[1], root_level)
    full = sample(random.Random(1))
    assert is_valid(full, root_level) == reference_valid(full, root_level) == False  # noqa: E712  (2-3 roots)
