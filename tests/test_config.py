from dataclasses import dataclass

import pytest

from sketchlab.config import TrainingConfig, apply_hparams, from_dict, split_hparams, to_dict
from sketchlab.data.sources import parse_categories
from sketchlab.errors import ConfigError


@dataclass
class C(TrainingConfig):
    categories: list[str] | None = None
    dec_model: str = "lstm"
    conditional: bool = True
    ratio: float = 0.5


def test_originals_hparams_syntax():
    c = apply_hparams(C(), "categories=[bee,bus], dec_model=hyper,conditional=0,batch_size=200,"
                           "learning_rate=1e-4")
    assert c.categories == ["bee", "bus"] and c.dec_model == "hyper"
    assert c.conditional is False and c.batch_size == 200 and c.learning_rate == 1e-4
    assert split_hparams("a=[1,2],b='x,y'") == [("a", "[1,2]"), ("b", "'x,y'")]


@pytest.mark.parametrize("bad, msg", [
    ("nosuch=1", "unknown hyperparameter 'nosuch'"),
    ("batch_size=1.5", "batch_size"),
    ("conditional=maybe", "boolean"),
    ("categories=[a,b", "unbalanced"),
    ("batch_size", "name=value"),
])
def test_hparams_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        apply_hparams(C(), bad)


def test_dict_roundtrip_and_unknown_keys():
    c = C(categories=["a"], ratio=0.25)
    assert from_dict(C, to_dict(c)) == c
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(C, {"dec_rnn_size": 3})


def test_parse_categories():
    assert parse_categories("[bee, bus]") == ["bee", "bus"]
    assert parse_categories("a,,b") == ["a", "b"]
    assert parse_categories(None) == []


@pytest.mark.parametrize("hparams, message", [
    ("batch_size=-4", "batch_size=-4: must be an integer >= 1"),
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("learning_rate=nan", "learning_rate=nan: must be a number > 0, not NaN"),
    ("learning_rate=0", "learning_rate=0.0: must be a number > 0"),
    ("z_size=-1", "z_size=-1: must be an integer >= 1"),
    ("dec_rnn_size=0", "dec_rnn_size=0: must be an integer >= 1"),
    ("max_seq_len=0", "max_seq_len=0: must be an integer >= 1, or -1"),
    ("recurrent_dropout_prob=1.5", r"recurrent_dropout_prob=1.5: must be a number in \[0, 1\]"),
    ("kl_weight=inf", "kl_weight=inf: .* not NaN or infinite"),
    ("eval_every=-1", "eval_every=-1: must be a number >= 0"),
])
def test_every_size_rate_and_count_is_range_checked_with_the_field_named(hparams, message):
    from sketchlab.models.sketch_rnn import Config as SketchRNNConfig

    with pytest.raises(ConfigError, match="--hparams: " + message):
        apply_hparams(SketchRNNConfig(), hparams)


def test_config_json_values_are_range_checked_too():
    from sketchlab.models.rpcl_pix2seq import Config as RPCLConfig

    with pytest.raises(ConfigError, match=r"run/config.json: cnn_channels=\(8, 0, 32, 64\): must be a list"):
        from_dict(RPCLConfig, {"cnn_channels": [8, 0, 32, 64]}, where="run/config.json")
    assert from_dict(RPCLConfig, {"max_seq_len": -1}).max_seq_len == -1
