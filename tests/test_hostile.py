"""Hostile input never ends in a traceback: a sane result or a one-line error with exit code 2."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.config import load_config
from nmt.errors import CheckpointError, ConfigError, DataError
from nmt.toy import toy_config_dict, write_config

NMT = str(Path(sys.executable).parent / "nmt")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20)
values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)
section_names = st.sampled_from(["name", "data", "tokenizer", "model", "training", "decoding", "evaluation", "seed",
                                 "run_dir", "bogus"])


@FAST
@given(raw=st.dictionaries(section_names, values, max_size=6))
def test_random_configs_load_or_fail_cleanly(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err) and "Traceback" not in str(err)


@FAST
@given(text=st.binary(max_size=200))
def test_random_bytes_as_a_config_fail_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError):
        load_config(path)


@FAST
@given(overrides=st.lists(st.text(max_size=30), max_size=3))
def test_random_overrides_fail_cleanly(toy_config_path, overrides):
    try:
        load_config(toy_config_path, overrides)
    except ConfigError:
        pass


HOSTILE_CORPORA = {
    "invalid_utf8": (b"good line\n\xc3\x28 broken\n", b"gut\nkaputt\n", 2),
    "nul_and_controls": (b"a\x00b c\x07d\n" * 30, b"x\x1by z\n" * 30, 0),
    "crlf_bom": ("\ufeffhello there\r\n".encode() * 30, "\ufeffhallo da\r\n".encode() * 30, 0),
    "huge_line": (b"word " * 20000 + b"\n" + b"short one\n" * 30, b"wort\n" + b"kurz\n" * 30, 0),
    "empty_files": (b"", b"", 2),
    "misaligned": (b"a\nb\nc\n", b"a\n", 2),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CORPORA))
def test_hostile_corpora_through_the_cli(tmp_path, case):
    src_bytes, tgt_bytes, expected = HOSTILE_CORPORA[case]
    raw = toy_config_dict(tmp_path)
    (tmp_path / "h.src").write_bytes(src_bytes)
    (tmp_path / "h.tgt").write_bytes(tgt_bytes)
    raw["data"]["train"] = {"format": "text", "src": str(tmp_path / "h.src"), "tgt": str(tmp_path / "h.tgt")}
    raw["tokenizer"]["vocab_size"] = 30
    result = subprocess.run([NMT, "data", "--config", str(write_config(tmp_path, raw))], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == expected, result.stderr
    assert "Traceback" not in result.stderr
    if expected:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


@settings(max_examples=30, deadline=None)
@given(lines=st.lists(st.text(max_size=60) | st.sampled_from(["   ", "\t", "😀🎌 日本語 and English ١٢٣", "x" * 10_000,
                                                              "ab ca " * 2000]), min_size=1, max_size=6))
def test_translate_any_text(trained_translator, lines):
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    results = trained_translator.translate(lines)
    assert len(results) == len(lines)
    for line, result in zip(lines, results, strict=True):
        assert isinstance(result.text, str)
        if not line.strip():
            assert result.text == ""


@pytest.fixture(scope="module")
def trained_translator(trained_run):
    from nmt.checkpoint import load_model
    from nmt.translate import Translator

    config, tokenizer, model, _ = load_model(trained_run)
    return Translator(model, tokenizer, config.decoding.model_copy(update={"max_src_tokens": 64}))


def test_a_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    from nmt import checkpoint
    from nmt.train import train

    raw = toy_config_dict(tmp_path, training={"max_steps": 10, "validate_every": 5})
    path = write_config(tmp_path, raw)
    train(load_config(path), progress=False)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(load_config(path, ["training.max_steps=15"]), resume=True, progress=False)
    after = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert after == before  # nothing half-written, nothing lost
    assert checkpoint.latest_intact(tmp_path / "run").step == 10


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_run_directory_is_a_clear_error(tmp_path):
    raw = toy_config_dict(tmp_path, training={"max_steps": 5})
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(0o500)
    result = subprocess.run([NMT, "train", "--config", str(write_config(tmp_path, raw))], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "run" in result.stderr


def test_data_error_messages_are_single_lines(tmp_path):
    (tmp_path / "a").write_bytes(b"ok\n\xff\n")
    from nmt.corpus import read_lines

    with pytest.raises(DataError) as caught:
        list(read_lines(tmp_path / "a"))
    assert "\n" not in str(caught.value)
