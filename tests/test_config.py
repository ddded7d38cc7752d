"""Trainer config validation: bad values are refused before training, naming the field."""
from __future__ import annotations

import pytest

from ncstudy.cli import main
from ncstudy.config import TrainConfig, flatten, load_train_config, set_dotted
from ncstudy.errors import ConfigError


def _write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, field",
    [
        ("data: {name: imagenet}", "data.name"),
        ("model: {name: vgg}", "model.name"),
        ("model: {activation: swish}", "model.activation"),
        ("optimizer: {name: rmsprop}", "optimizer.name"),
        ("ce_epochs: -1", "ce_epochs"),
        ("model: {width: 0}", "model.width"),
        ("model: {depth: -2}", "model.depth"),
        ("eval: {strict_threshold: 1.5}", "eval.strict_threshold"),
        ("eval: {relaxed_threshold: 0}", "eval.relaxed_threshold"),
        ("batch_sise: 64", "batch_sise"),
        ("ce_epochs: 0\nmse_epochs: 0", "ce_epochs + mse_epochs"),
    ],
)
def test_bad_values_name_the_field(tmp_path, text, field):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_train_config(p)
    assert str(p) in str(e.value)
    assert field in str(e.value)


def test_train_cli_bad_config_exits_2(tmp_path, capsys):
    p = _write(tmp_path, "model: {activation: swish}")
    assert main(["train", str(p)]) == 2
    err = capsys.readouterr().err
    assert "model.activation" in err and str(p) in err


def test_missing_file_and_non_mapping(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    p = _write(tmp_path, "- 1\n- 2\n")
    assert main(["train", str(p)]) == 2
    assert "mapping" in capsys.readouterr().err


def test_defaults_are_the_papers_mlp_protocol():
    c = TrainConfig()
    assert (c.ce_epochs, c.mse_epochs) == (200, 400)
    assert (c.model.name, c.model.depth, c.model.width, c.model.activation) == ("mlp", 5, 512, "relu")
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.schedule) == (
        "adam", 1e-3, 1e-4, "cosine")
    assert (c.eval.strict_threshold, c.eval.relaxed_threshold, c.eval.terminal_acc) == (0.01, 0.05, 0.99)


def test_flatten_and_set_dotted_round_trip():
    d = TrainConfig().model_dump()
    flat = flatten(d)
    assert flat["model.width"] == 512 and flat["optimizer.lr"] == 1e-3
    set_dotted(d, "model.width", 128)
    assert TrainConfig.model_validate(d).model.width == 128
