"""The import direction and file sizes the codebase promises (docs/CONTRACTS.md, "Layers").

Every import, including the ones inside functions, goes from a higher layer to a lower one:
    pipeline.config < pipeline.data < {pipeline.model, data_prep} < pipeline.parallel
        < {pipeline.eval, pipeline.generate} < pipeline.train < pipeline.export < {launch, bench, experiments}
A package may import itself; packages on the same layer may not import each other. data_prep is an offline
tool beside the training stack: it builds on the shard format (pipeline.data) but nothing in pipeline imports it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = {
    "pipeline.config": 0,
    "pipeline.data": 1,
    "pipeline.model": 2, "data_prep": 2,
    "pipeline.parallel": 3,
    "pipeline.eval": 4, "pipeline.generate": 4,
    "pipeline.train": 5,
    "pipeline.export": 6,
    "launch": 7, "bench": 7, "experiments": 7,
}
MAX_LINES = 400


def package_of(module: str) -> str | None:
    parts = module.split(".")
    for n in (2, 1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    return None


def source_files() -> list[Path]:
    return sorted(p for top in ("pipeline", "data_prep", "launch", "bench", "experiments")
                  for p in (REPO / top).rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_every_import_points_down():
    wrong = []
    for path in source_files():
        own = package_of(module_name(path))
        if own is None:
            continue
        for line, target in imported_modules(path):
            other = package_of(target)
            if other is None or other == own:
                continue
            if LAYERS[other] >= LAYERS[own] or (other == "data_prep" and own.startswith("pipeline.")):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {own} (layer {LAYERS[own]}) imports {target} "
                             f"(layer {LAYERS[other]})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


@pytest.mark.parametrize("top", ["pipeline", "data_prep", "launch", "bench", "experiments", "tests"])
def test_no_file_over_the_size_limit(top):
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in sorted((REPO / top).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_checker_sees_a_violation(tmp_path):
    """Negative control: an upward import in a lower layer is found by the same parser."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.train.trainer import Trainer\n")
    assert (2, "pipeline.train.trainer") in imported_modules(bad)
    assert LAYERS[package_of("pipeline.train.trainer")] > LAYERS[package_of("pipeline.data.loader")]
