"""The model interface every model declares: capabilities, sampling Options, the healing option,
and the `sketchlab sample` flags built from them."""

import argparse
import dataclasses

import pytest

from sketchlab.cli.train import add_option_flags, option_overrides, option_table
from sketchlab.errors import ConfigError
from sketchlab.models import CAPABILITIES, MODELS, get_model_class, models_with, models_with_option

#                 sample encode heal  complete components heal_option
TABLE = {
    "sketch-rnn":    (1, 1, 0, 1, 0, None),
    "rpcl-pix2seq":  (1, 1, 0, 1, 1, None),
    "rpcl-pix2seqh": (1, 1, 0, 1, 1, None),
    "sp-gra2seq":    (0, 1, 1, 0, 0, "mask_prob"),
    "sketchgloc":    (0, 1, 1, 0, 0, "displacement"),
    "sketchknitter": (1, 0, 1, 0, 0, "noise_level"),
    "sketch-a-net": (0, 0, 0, 0, 0, None),          # the judge: trained, then only scores
}


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_declares_its_capabilities_and_options(name):
    cls = get_model_class(name)
    *flags, heal = TABLE[name]
    assert tuple(int(getattr(cls, c)) for c in CAPABILITIES) == tuple(flags)
    assert cls.heal_option == heal
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    assert {"temperature", "batch_size"} <= set(fields)
    assert heal is None or heal in fields
    for f in fields.values():                       # every option explains itself (the CLI's help)
        assert f.metadata.get("help"), f"{name}: option {f.name} has no help"
    cls.Options()                                   # defaults build


def test_registry_answers_who_can_and_who_takes():
    assert models_with("can_heal") == ["sp-gra2seq", "sketchgloc", "sketchknitter"]
    assert models_with("has_components") == ["rpcl-pix2seq", "rpcl-pix2seqh"]
    assert models_with_option("unit") == ["rpcl-pix2seqh"]
    assert models_with_option("greedy") == ["sketch-rnn", "rpcl-pix2seq", "rpcl-pix2seqh",
                                            "sp-gra2seq", "sketchgloc"]
    with pytest.raises(ConfigError, match="capability"):
        models_with("can_fly")


def test_sample_flags_are_the_union_of_the_options():
    table = option_table()
    assert table["component"]["models"] == ["rpcl-pix2seq", "rpcl-pix2seqh"]
    assert set(table["temperature"]["models"]) == set(MODELS)
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    args = parser.parse_args(["--temperature", "0.3", "--greedy", "--steps", "ddim30",
                              "--batch-size", "7", "--prior", "standard"])
    assert (args.temperature, args.greedy, args.steps, args.batch_size) == (0.3, True, "ddim30", 7)
    assert parser.parse_args(["--steps", "12", "--no-use-ema", "--compile", "true"]).steps == 12
    assert parser.parse_args(["--compile", "max-autotune-no-cudagraphs"]).compile == \
        "max-autotune-no-cudagraphs"
    with pytest.raises(SystemExit):
        parser.parse_args(["--sampler", "euler"])               # choices from the Literal
    rpcl = get_model_class("rpcl-pix2seq")
    ok = parser.parse_args(["--temperature", "0.3", "--greedy", "--prior", "standard"])
    assert option_overrides(ok, rpcl) == {"temperature": 0.3, "greedy": True, "prior": "standard"}
    with pytest.raises(ConfigError, match="--steps does not apply to a rpcl-pix2seq model; it is "
                                          "an option of sketchknitter"):
        option_overrides(args, rpcl)
