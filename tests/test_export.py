"""ONNX export: the encoder and one decoder step on onnxruntime, driven by the Python search, give the same
token ids as PyTorch on every dev sentence (greedy and beam), for the RNN and the Transformer."""

from __future__ import annotations

import shutil

import pytest

from nmt.checkpoint import load_run_config
from nmt.corpus import load_split
from nmt.errors import ConfigError
from nmt.rundir import RunDir
from nmt.translate import translate_lines

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_onnx_runtime_gives_the_same_token_ids_on_the_dev_set(fixture, request, tmp_path):
    from nmt.export import export_onnx

    run = shutil.copytree(request.getfixturevalue(fixture), tmp_path / "run")
    with pytest.raises(ConfigError, match="no exported model"):
        translate_lines(run, ["ab"], runtime="onnx")
    folder = export_onnx(run)
    with pytest.raises(ConfigError, match="not to --runtime onnx"):
        translate_lines(run, ["ab"], checkpoint="last", runtime="onnx")
    assert (folder / "encoder.onnx").is_file() and (folder / "step.onnx").is_file()
    dev = load_split(load_run_config(RunDir(run)).data, "dev").src
    for beam in (1, 3):
        torch_ids = [t.hypotheses[0].tokens for t in translate_lines(run, dev, beam_size=beam).translations]
        onnx = translate_lines(run, dev, beam_size=beam, runtime="onnx").translations
        assert [t.hypotheses[0].tokens for t in onnx] == torch_ids
        assert all(t.hypotheses[0].tokens for t in onnx)  # real translations, not empty ones


def test_ctranslate2_gives_the_same_greedy_token_ids_for_a_transformer(trained_transformer, trained_run, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the export extra) is not installed")
    from nmt.checkpoint import load_model
    from nmt.export import export_ctranslate2
    from nmt.translate import Translator

    with pytest.raises(ConfigError, match="for Transformer runs"):
        export_ctranslate2(trained_run, output=tmp_path / "rnn")
    folder = export_ctranslate2(trained_transformer, output=tmp_path / "ct2")
    loaded = load_model(trained_transformer)
    tokenizer = loaded.tokenizer
    dev = load_split(loaded.config.data, "dev").src
    sources = Translator.for_run(loaded).encode(dev)  # ending in </s>, as the exported model expects
    found = ctranslate2.Translator(str(folder), device="cpu").translate_batch(
        [tokenizer.src_pieces(s) for s in sources], beam_size=1, max_decoding_length=64)
    ct2_ids = [[tokenizer.tgt.piece_to_id(p) for p in r.hypotheses[0]] for r in found]
    torch_ids = [t.hypotheses[0].tokens for t in translate_lines(trained_transformer, dev, beam_size=1).translations]
    assert ct2_ids == torch_ids
