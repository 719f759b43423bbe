"""cfg3f (Physics of Language Models, part 1; paper Appendix B.2) and a sampler for it.

Root 22; six expansion levels; every rule rewrites a level-l symbol into 2 or 3 symbols of level l+1, chosen
uniformly at random; terminals 1, 2, 3. So every string is 2^6 = 64 ... 3^6 = 729 terminals long.
"""
from __future__ import annotations

import random

ROOT = 22
TERMINALS = (1, 2, 3)
DEPTH = 6

RULES: dict[int, list[tuple[int, ...]]] = {
    22: [(20, 21), (20, 19, 21), (21, 19, 19), (20, 20)],
    19: [(18, 16, 18), (17, 18), (18, 18)],
    20: [(16, 16), (16, 17), (17, 16, 18)],
    21: [(18, 17), (17, 16), (16, 17, 18), (16, 18)],
    16: [(15, 15), (13, 15, 13), (14, 13), (14, 14)],
    17: [(15, 14, 13), (14, 15), (15, 14)],
    18: [(14, 15, 13), (15, 13, 13), (13, 15)],
    13: [(11, 12), (12, 11, 12), (10, 12, 11)],
    14: [(10, 12), (12, 10, 12), (12, 11), (10, 12, 12)],
    15: [(10, 11, 11), (11, 11, 10), (10, 10), (12, 12, 11)],
    10: [(8, 9, 9), (9, 7, 9), (7, 9, 9)],
    11: [(8, 8), (9, 7), (9, 7, 7)],
    12: [(7, 9, 7), (9, 8), (8, 8, 9)],
    7: [(2, 2, 1), (3, 2, 2), (3, 1, 2), (3, 2)],
    8: [(3, 1, 1), (1, 2), (3, 3, 1)],
    9: [(1, 2, 1), (3, 3), (1, 1)],
}

# LEVELS[l] = the non-terminals at level l (level 0 = root, level 5 rewrites into terminals)
LEVELS: list[tuple[int, ...]] = [(22,), (19, 20, 21), (16, 17, 18), (13, 14, 15), (10, 11, 12), (7, 8, 9)]
MIN_LEN, MAX_LEN = 2 ** DEPTH, 3 ** DEPTH


def span_bounds(level: int) -> tuple[int, int]:
    """A level-l symbol derives between 2^(6-l) and 3^(6-l) terminals."""
    return 2 ** (DEPTH - level), 3 ** (DEPTH - level)


def length_bounds(root_level: int = 0) -> tuple[int, int]:
    """Shortest and longest string of the grammar rooted at `root_level` (0 = cfg3f itself)."""
    return span_bounds(root_level)


def sample(rng: random.Random, root_level: int = 0) -> list[int]:
    """One string: expand level by level, each symbol by a uniformly chosen rule. root_level > 0 samples the
    bottom 6 - root_level levels of cfg3f (the start symbol drawn uniformly from LEVELS[root_level]): the CPU
    scale-down of the CFG experiment keeps the rules and shortens the derivations."""
    seq = [ROOT] if root_level == 0 else [rng.choice(LEVELS[root_level])]
    for _ in range(DEPTH - root_level):
        out: list[int] = []
        for sym in seq:
            out.extend(rng.choice(RULES[sym]))
        seq = out
    return seq


def sample_many(count: int, seed: int, root_level: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [sample(rng, root_level) for _ in range(count)]
