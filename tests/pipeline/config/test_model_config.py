import warnings
from pathlib import Path

import pytest

from pipeline.config.base import ConfigError
from pipeline.config.model import ModelConfig, load_model_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "model").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_model_config_loads(path):
    cfg = load_model_config(path)
    assert isinstance(cfg, ModelConfig) and cfg.name == path.stem


def test_paper_shapes():
    ot = load_model_config("configs/model/olmoe-1.3b-ot12.8m.yaml")
    assert (ot.d_model, ot.n_heads, ot.n_layers, ot.n_experts, ot.expert_hidden, ot.top_k) == (1024, 16, 12, 64, 512, 8)
    assert "inferred" in ot.note
    assert (ot.over_encoding.n, ot.over_encoding.k, ot.over_encoding.m) == (3, 2, 12_800_000)
    assert (ot.over_decoding.mode, ot.over_decoding.depth, ot.over_decoding.weight) == ("mtp", 1, 0.1)
    big = load_model_config("configs/model/olmoe-7b-oe12.8m.yaml")
    assert (big.d_model, big.n_layers, big.expert_hidden, big.over_encoding.k) == (2048, 16, 1024, 4)
    assert big.over_encoding.reset_at_doc and not big.over_encoding.output_norm
    assert big.over_encoding.output_scale == 1.0 and big.over_decoding.mode == "none"


def test_run_config_model_section():
    cfg = load_model_config(data={"d_model": 64, "n_heads": 4, "vocab_size": 10, "padded_vocab_size": 16})
    assert cfg.head_dim == 16


@pytest.mark.parametrize("override,message", [
    ("n_heads=5", "n_heads: d_model 1024 is not divisible by n_heads 5"),
    ("top_k=65", "top_k: must be in [1, n_experts=64]"),
    ("padded_vocab_size=100", "padded_vocab_size: 100 is smaller than vocab_size 50280"),
    ("mlp=dense", "dense_hidden: must be >= 1"),
    ("mlp=sparse", "mlp: 'sparse' is not allowed"),
    ("over_encoding.k=3", "over_encoding.k: d_model 1024 is not divisible by k(n-1) = 6"),
    ("over_encoding.m=502800", "over_encoding.m: table 0 modulus m+2t=502800 is a multiple of vocab_size=50280"),
    ("over_encoding.m=502798", "over_encoding.m: table 1 modulus m+2t=502800 is a multiple"),
    ("over_encoding.n=1", "over_encoding.n: must be >= 2"),
    ("over_encoding.m=9.0e+18", "over_encoding.m: 9000000000000000000 too large"),
    ("over_decoding.mode=mtp", None),
    ("over_decoding.weights=[0.1,0.2]", "over_decoding.weights: needs 1 values for mode mtp, got 2"),
    ("over_decoding.depth=0", "over_decoding.depth: must be >= 1"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    base = ["over_decoding.mode=mtp"] if override.startswith("over_decoding.w") or "depth" in override else []
    if message is None:
        load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml", [override])
        return
    with pytest.raises(ConfigError) as err:
        load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml", base + [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_warns_when_modulus_shares_a_large_factor_with_vocab():
    with pytest.warns(UserWarning, match="shares factor"):
        load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml", ["over_encoding.m=527940"])  # gcd(10.5·V, V) = V/2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model_config("configs/model/olmoe-1.3b-oe12.8m.yaml")
