from pathlib import Path

import pytest
import yaml
from toy import toy_config_dict, write_config

from nmt.config import MAX_BEAM, config_to_yaml, load_config, parse_config
from nmt.errors import ConfigError


def error_for(tmp_path: Path, raw: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, raw), overrides)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_valid_config_loads_with_defaults(toy_config_path):
    config = load_config(toy_config_path)
    assert config.model.attention.type == "bahdanau"
    assert config.training.clip_norm == 1.0
    assert config.run_path.name == "run"


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    raw = toy_config_dict(tmp_path)
    raw["model"]["encoder"]["hiden_size"] = 3
    assert "model.encoder.hiden_size: Extra inputs are not permitted" in error_for(tmp_path, raw)


def test_wrong_type_is_rejected(tmp_path):
    raw = toy_config_dict(tmp_path)
    raw["training"]["batch_tokens"] = "many"
    assert "training.batch_tokens" in error_for(tmp_path, raw)


def test_negative_size_is_rejected(tmp_path):
    raw = toy_config_dict(tmp_path)
    raw["model"]["embed_dim"] = -4
    message = error_for(tmp_path, raw)
    assert "model.embed_dim: Input should be greater than 0" in message and "-4" in message


def test_unknown_attention_type_is_rejected(tmp_path):
    raw = toy_config_dict(tmp_path, model={"attention": {"type": "multiplicative"}})
    assert "model.attention.type" in error_for(tmp_path, raw)


def test_missing_data_file_is_rejected(tmp_path):
    raw = toy_config_dict(tmp_path)
    raw["data"]["train"]["src"] = str(tmp_path / "nope.txt")
    message = error_for(tmp_path, raw)
    assert "data.train.src" in message and "file not found" in message


def test_cross_field_rules(tmp_path):
    raw = toy_config_dict(tmp_path, model={"attention": {"type": "dot"}})  # encoder 2x48 != decoder 64
    assert "dot needs the encoder output size (96)" in error_for(tmp_path, raw)
    raw = toy_config_dict(tmp_path, decoding={"beam_size": 2, "n_best": 3})
    assert "n_best (3) cannot exceed beam_size (2)" in error_for(tmp_path, raw)
    raw = toy_config_dict(tmp_path)
    raw["training"].pop("max_steps")
    assert "set at least one budget" in error_for(tmp_path, raw)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata:\n  src_lang: [en\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: invalid YAML"):
        load_config(path)


def test_non_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_set_nested_values_and_parse_yaml(toy_config_path):
    config = load_config(toy_config_path, ["training.lr=0.5", "model.attention.type=general",
                                           "training.betas=[0.8, 0.9]"])
    assert config.training.lr == 0.5
    assert config.model.attention.type == "general"
    assert config.training.betas == (0.8, 0.9)


def test_an_override_sets_a_key_of_an_optional_section_left_null(tmp_path):
    """A run's saved config holds `ema: null`, `mbr: null`: `--set training.ema.decay=0.99` starts the section."""
    raw = toy_config_dict(tmp_path)
    raw["training"]["ema"] = None
    raw["decoding"]["mbr"] = None
    config = load_config(write_config(tmp_path, raw), ["training.ema.decay=0.99", "decoding.mbr.candidates=4"])
    assert config.training.ema is not None and config.training.ema.decay == 0.99
    assert config.decoding.mbr is not None and config.decoding.mbr.candidates == 4


def test_override_of_unknown_key_or_malformed_is_rejected(toy_config_path):
    with pytest.raises(ConfigError, match="training.bogus: Extra inputs"):
        load_config(toy_config_path, ["training.bogus=1"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(toy_config_path, ["training.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(toy_config_path, ["name.sub=1"])


def test_resolved_config_round_trips(toy_config_path):
    config = load_config(toy_config_path, ["training.lr=0.25"])
    again = parse_config(yaml.safe_load(config_to_yaml(config)))
    assert again == config


def test_shipped_configs_are_valid():
    for path in sorted(Path(__file__).parent.parent.glob("configs/*.yaml")):
        load_config(path, check_files=False)


def test_input_feeding_is_a_luong_option_and_the_resolved_config_says_so(tmp_path, caplog):
    raw = toy_config_dict(tmp_path, model={"decoder": {"hidden_size": 64, "input_feeding": True}})
    config = load_config(write_config(tmp_path, raw))
    assert config.model.input_feeding is False and config.model.decoder.input_feeding is False
    assert "Bahdanau attention feeds its context vector" in caplog.text
    luong = load_config(write_config(tmp_path, toy_config_dict(tmp_path, model={"attention": {"type": "general"}})))
    assert luong.model.decoder.input_feeding is True
    bahdanau = load_config(write_config(tmp_path, toy_config_dict(tmp_path)))
    assert "input_feeding: false" in config_to_yaml(bahdanau)


def test_beam_size_has_a_documented_maximum(tmp_path):
    raw = toy_config_dict(tmp_path, decoding={"beam_size": MAX_BEAM + 1})
    with pytest.raises(ConfigError, match="decoding.beam_size"):
        load_config(write_config(tmp_path, raw))


def test_transformer_settings_are_checked_against_the_rest_of_the_config(tmp_path):
    transformer = {"type": "transformer", "transformer": {"tie": "all"}}
    with pytest.raises(ConfigError, match="set tokenizer.joint: true"):
        load_config(write_config(tmp_path, toy_config_dict(tmp_path, model=transformer)))
    with pytest.raises(ConfigError, match="multiple of heads"):
        load_config(write_config(tmp_path, toy_config_dict(tmp_path, model={
            "type": "transformer", "transformer": {"d_model": 30, "heads": 4}})))
    with pytest.raises(ConfigError, match="scheduled sampling"):
        load_config(write_config(tmp_path, toy_config_dict(tmp_path, model={"type": "transformer"},
                                                           training={"teacher_forcing": 0.5})))
    with pytest.raises(ConfigError, match="attention.heads"):
        load_config(write_config(tmp_path, toy_config_dict(tmp_path, model={
            "attention": {"type": "multihead", "heads": 3}})))


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """A "billion laughs" config (9 levels of 9 nested aliases, under 1 KB) is refused at once, naming the
    line, instead of expanding for minutes into gigabytes."""
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1024
    with pytest.raises(ConfigError, match=r"bomb\.yaml line 2: invalid YAML: aliases \(\*name\) are not accepted"):
        load_config(bomb)
    with pytest.raises(ConfigError, match="aliases"):
        load_config(write_config(tmp_path, toy_config_dict(tmp_path)), ["training.lr=*x"])


def test_error_messages_quote_a_huge_input_briefly(tmp_path):
    raw = toy_config_dict(tmp_path)
    raw["training"]["lr"] = "x" * 1_000_000
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, raw))
    message = str(caught.value)
    assert "training.lr" in message and "1,000,002 characters" in message and len(message) < 1000
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, toy_config_dict(tmp_path)), ["training=" + "y" * 1_000_000])
    assert len(str(caught.value)) < 1000


@pytest.mark.parametrize(("override", "key"), [
    ("seed=-1", "seed"), ("seed=1e23", "seed"), ("seed=4294967296", "seed"),
    ("decoding.max_ratio=.inf", "decoding.max_ratio"), ("decoding.max_ratio=1e6", "decoding.max_ratio"),
    ("decoding.max_extra=1000000000", "decoding.max_extra"), ("training.lr=.nan", "training.lr"),
    ("training.clip_norm=.inf", "training.clip_norm")])
def test_unbounded_or_non_finite_settings_are_refused_naming_the_key(tmp_path, override, key):
    """Values that used to reach torch as a traceback (a seed it cannot take, a 32 GB search buffer)."""
    message = error_for(tmp_path, toy_config_dict(tmp_path), [override])
    assert key in message and "\n" not in message
