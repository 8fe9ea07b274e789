import pytest

from distgnn.core.config import (
    PrepareConfig,
    TrainJobConfig,
    config_from_args,
    config_to_dict,
    load_config,
    make_parser,
    replace_nested,
)
from distgnn.core.errors import ConfigError


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {epochs: 7, lr: 0.5}\nsampler: {num_neighbors: [4, 3]}\n")
    parser = make_parser(TrainJobConfig, "t", "t")
    cfg = config_from_args(TrainJobConfig, parser.parse_args(["--config", str(path), "--optim.lr", "0.1"]))
    assert cfg.optim.epochs == 7 and cfg.optim.lr == 0.1
    assert cfg.sampler.num_neighbors == (4, 3)
    assert cfg.model.name == "lightgcn"  # untouched default


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("optim.epoch", 3, "unknown config key 'optim.epoch'"),
        ("optim.epochs", "many", "config key 'optim.epochs': expected an integer"),
        ("model.name", "gat", "config key 'model.name': expected one of"),
        ("eval.ks", "10,x", "config key 'eval.ks': expected an integer"),
        ("cluster.num_workers", True, "expected an integer"),
    ],
)
def test_bad_keys_and_types_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainJobConfig, **{key: value})


def test_unknown_yaml_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimiser: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'optimiser'"):
        load_config(TrainJobConfig, path)


def test_roundtrip_and_replace():
    cfg = load_config(PrepareConfig, **{"synthetic.num_users": 10})
    assert load_config(PrepareConfig, **{"synthetic.num_users": 10}) == cfg
    again = replace_nested(cfg, split="temporal")
    assert again.split == "temporal" and again.synthetic.num_users == 10
    assert config_to_dict(again)["synthetic"]["num_users"] == 10


def test_help_lists_every_option(capsys):
    parser = make_parser(TrainJobConfig, "python -m distgnn.train", "train")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--optim.lr", "--sampler.num_neighbors", "--cluster.num_workers", "--synthetic.num_users"):
        assert flag in text


def test_shipped_configs_load_and_default_matches_no_arguments():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(TrainJobConfig, path)
    assert load_config(TrainJobConfig, Path(__file__).parents[1] / "configs" / "default.yaml") == TrainJobConfig()
