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
