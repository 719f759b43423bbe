"""`python -m data_prep verify DIR`: re-check every shard against the manifest; report the first bad file."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.data.manifest import read_manifest, verify_manifest


def run_verify(folder: str, level: str = "full", progress: bool = True, log=print) -> None:
    """Raises ShardError naming the first bad file; returns quietly (after one summary line) when all is well."""
    t0 = time.time()
    m = read_manifest(folder)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(m.shards), unit="shard", desc="verify", disable=None, file=sys.stderr)
    try:
        verify_manifest(Path(folder), m, level, on_shard=(lambda _: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    t = m.totals
    log(f"{folder}: OK ({level}): {t['train']['shards']} train + {t['val']['shards']} val shards, "
        f"{t['all']['documents']:,} documents, {t['all']['tokens']:,} tokens, {m.dtype}, tokenizer "
        f"{m.tokenizer.path} (sha256 {m.tokenizer.sha256[:12]}…) in {time.time() - t0:.1f} s")
