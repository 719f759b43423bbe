"""The synthetic CFG experiment (paper §3.1): the cfg3f grammar, its generator and exact parser."""
