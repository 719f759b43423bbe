"""`python -m data_prep index --config RUN.yaml [key=value ...]`: build a run's packing index cache offline.

Training builds it at start on local rank 0 of each node (pipeline/data/index_cache.py); at hundreds of
millions of documents that is minutes of a cluster allocation, so it can be built here beforehand, with the
run's own config (same sources, seed, seq_len and train.max_steps, hence the same cache folders).
"""
from __future__ import annotations



def run_build_index(config: str, overrides: list[str], out=print) -> None:
    from data_prep.errors import DataPrepError
    from pipeline.config.run import load_run_config
    from pipeline.data.index_cache import IndexCacheError
    from pipeline.data.loader import DataMismatchError, build_loaders

    cfg = load_run_config(config, overrides)
    if cfg.data.index != "cache":
        raise DataPrepError(f"{config}: data.index={cfg.data.index!r}: this run keeps its index in memory, "
                            f"there is no cache to build")
    # This process builds: the loader's builder is local rank 0, which an unset LOCAL_RANK means. The
    # environment is left alone (a LOCAL_RANK set here would leak into every process started after it).
    try:
        train, _, _ = build_loaders(cfg.data, cfg.model.vocab_size, cfg.train.seed, cfg.train.global_batch_size,
                                    cfg.train.micro_batch_size, cfg.eval.batches, 0, 1,
                                    max_steps=cfg.train.max_steps)
    except (DataMismatchError, IndexCacheError) as e:
        raise DataPrepError(str(e)) from None
    for name, seqs in zip(train.sequences.names, train.sequences.sources):
        epochs = sorted(p.name for p in seqs.index.folder.glob("epoch-*.json"))
        out(f"{name}: {len(epochs)} epoch(s) ready in {seqs.index.folder}")
