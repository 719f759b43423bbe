"""Shared by the truncated/corrupt-input tests: documents to damage, the CLI in a fresh process, and the checks
that a refusal is one line naming the file, exit 2, with nothing half-written in the output folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from data_prep.readers import ReadOptions, iter_nonempty, read_documents
from data_prep.resume import JOURNAL_NAME
from data_prep.sources import detect, expand_inputs
from data_prep.stats import InputStats
from pipeline.data.indexed_dataset import IndexedShardReader
from tests.data_prep.conftest import REPO, make_docs

DOCS = make_docs(300, seed=7)


def jsonl_bytes(docs=DOCS) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()


def good_input(tmp_path: Path, docs: int = 40) -> Path:
    """An intact input to read before the damaged one. Documents are tokenized in chunks of ~0.5 MB / 4096
    documents (shard.CHUNK_*), so shards exist before the damaged file is reached only with docs >= ~3500."""
    p = tmp_path / "good.jsonl"
    p.write_bytes(jsonl_bytes(make_docs(docs, seed=1)))
    return p


def shard_cli(tmp_path: Path, tokenizer: str, *inputs, flags=(), shard_tokens=300):
    """`python -m data_prep shard` in a fresh process into tmp_path/out; returns (process, output folder)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep", "shard", "--no-progress", "--val-fraction", "0", "--shard-tokens",
           str(shard_tokens), "-t", tokenizer, "-o", str(out), *map(str, inputs), *flags]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300), out


def assert_refused(proc: subprocess.CompletedProcess, out: Path, bad: Path | str) -> str:
    """Exit 2, one line naming `bad`; no manifest; no temporary file; every shard left complete and journaled."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2 (a shorter dataset?)\n{err[-3000:]}"
    assert err.startswith("data_prep shard: error: ") and err.count("\n") == 1, err
    assert str(bad) in err, err
    assert not (out / "manifest.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    journal = out / JOURNAL_NAME
    recorded = set()
    if journal.exists():
        recorded = {json.loads(line)["bin"] for line in journal.read_text().splitlines()[1:]}
    for b in out.glob("*.bin"):
        assert b.name in recorded, f"{b.name}: a shard no journal line accounts for"
        IndexedShardReader(b.with_suffix(""))      # complete: the .idx opens and agrees with the .bin
    return err


def read_in_process(path: Path | str, **opts) -> list[str]:
    """The documents data_prep reads from a file, folder or hf: spec (same readers as the CLI, no tokenizer)."""
    [src] = expand_inputs([str(path)]) if str(path).startswith("hf:") else [detect(Path(path))]
    return list(iter_nonempty(read_documents(src, ReadOptions(**opts), InputStats())))
