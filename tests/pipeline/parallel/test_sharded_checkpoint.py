"""OE shards saved on 2 ranks resume on 1 and on 4 ranks: identical next-step loss, and identical loss
after one more optimizer step (so the table optimizer state was resharded too)."""
from __future__ import annotations

from tests.helpers.multirank import run_ranks


def test_save_on_2_resume_on_1_and_4(tmp_path, table_opt="adamw"):
    target = "tests.pipeline.parallel.workers:reshard"
    saved = run_ranks(2, target, {"phase": "save", "directory": str(tmp_path), "table_opt": table_opt})
    meta = (tmp_path / "oe" / "meta.json").read_text()
    assert '"world_size": 2' in meta
    for world in (1, 4):
        resumed = run_ranks(world, target, {"phase": "load", "directory": str(tmp_path), "table_opt": table_opt})
        for got in resumed:
            for a, b in zip(got, saved[0]):
                assert abs(a - b) <= 1e-5 * abs(b), (world, got, saved[0])
