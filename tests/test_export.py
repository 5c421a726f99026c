"""Exports decode like PyTorch: the encoder and one decoder step on onnxruntime, driven by the Python search
(greedy and beam, RNN and Transformer), and the Transformer on CTranslate2.

Two runtimes are different kernels, so their floating-point sums differ in the last bits, and a near-tie
between two tokens can go either way. Token ids are compared by an agreement rate (printed), and every
disagreement must be a near-tie: the two outputs' log-probabilities under the PyTorch model within NEAR_TIE.
A wrong export (a swapped weight, a missing bias, a wrong cache) changes far more than that."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from nmt.data.batching import collate
from nmt.data.splits import eval_set
from nmt.errors import CheckpointError, ConfigError
from nmt.inference.translate import Translator, translate_lines
from nmt.runs.loading import LoadedRun, load_model, load_run_config
from nmt.runs.rundir import RunDir

pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

pytestmark = pytest.mark.numerics

MIN_AGREEMENT = 0.95  # of the dev sentences with identical token ids (both fixtures: 100% measured, README)
NEAR_TIE = 0.05  # nats between the log-probabilities of two different outputs under PyTorch


def forced_log_probs(loaded: LoadedRun, sources: Sequence[str], outputs: Sequence[list[int]]) -> list[float]:
    """log p(output + EOS | source) under the PyTorch model, teacher-forced."""
    src = Translator.for_run(loaded).encode(list(sources))
    batch = collate(src, list(outputs), np.arange(len(src)))
    assert batch.tgt_in is not None and batch.tgt_out is not None
    with torch.inference_mode():
        logits, _ = loaded.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        chosen = logits.float().log_softmax(-1).gather(-1, batch.tgt_out.unsqueeze(-1)).squeeze(-1)
    return [float(chosen[row, : len(out) + 1].sum()) for row, out in enumerate(outputs)]


def assert_agreement(loaded: LoadedRun, sources: Sequence[str], reference: Sequence[list[int]],
                     other: Sequence[list[int]], what: str) -> None:
    """`other` equals `reference` on >= MIN_AGREEMENT of the sentences, and each disagreement is a near-tie."""
    differing = [i for i, (a, b) in enumerate(zip(reference, other, strict=True)) if a != b]
    rate = 1 - len(differing) / len(reference)
    gaps = []
    if differing:
        picked = [sources[i] for i in differing]
        mine = forced_log_probs(loaded, picked, [reference[i] for i in differing])
        theirs = forced_log_probs(loaded, picked, [other[i] for i in differing])
        gaps = [abs(a - b) for a, b in zip(mine, theirs, strict=True)]
    differences = f"largest log-probability gap where they differ: {max(gaps):.4f}" if gaps else "no disagreement"
    print(f"{what}: identical token ids on {rate:.1%} of {len(reference)} sentences; {differences}")
    assert all(other), f"{what}: an empty translation"
    assert rate >= MIN_AGREEMENT, f"{what}: identical token ids on {rate:.1%} of the sentences"
    assert all(gap <= NEAR_TIE for gap in gaps), f"{what}: a disagreement that is not a near-tie: {gaps}"


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_onnx_runtime_decodes_the_dev_set_as_pytorch_does(fixture, request, tmp_path):
    from nmt.export.onnx import export_onnx

    run = shutil.copytree(request.getfixturevalue(fixture), tmp_path / "run")
    with pytest.raises(ConfigError, match="no exported model"):
        translate_lines(run, ["ab"], runtime="onnx")
    folder = export_onnx(run)
    with pytest.raises(ConfigError, match="not to --runtime onnx"):
        translate_lines(run, ["ab"], checkpoint="last", runtime="onnx")
    assert (folder / "encoder.onnx").is_file() and (folder / "step.onnx").is_file()
    loaded = load_model(run)
    dev = eval_set(load_run_config(RunDir(run)).data).sources
    for beam in (1, 3):
        torch_ids = [t.hypotheses[0].tokens for t in translate_lines(run, dev, beam_size=beam).translations]
        onnx_ids = [t.hypotheses[0].tokens for t in translate_lines(run, dev, beam_size=beam, runtime="onnx")
                    .translations]
        assert_agreement(loaded, dev, torch_ids, onnx_ids, f"onnxruntime, {fixture}, beam {beam}")


def test_ctranslate2_decodes_a_transformer_as_pytorch_does(trained_transformer, trained_run, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed: pip install -e '.[export]'")
    from nmt.export.ctranslate2 import export_ctranslate2

    with pytest.raises(ConfigError, match="for Transformer runs"):
        export_ctranslate2(trained_run, output=tmp_path / "rnn")
    folder = export_ctranslate2(trained_transformer, output=tmp_path / "ct2")
    loaded = load_model(trained_transformer)
    tokenizer = loaded.tokenizer
    dev = eval_set(loaded.config.data).sources
    sources = Translator.for_run(loaded).encode(dev)  # ending in </s>, as the exported model expects
    found = ctranslate2.Translator(str(folder), device="cpu").translate_batch(
        [tokenizer.src_pieces(s) for s in sources], beam_size=1, max_decoding_length=64)
    ct2_ids = [[tokenizer.tgt.piece_to_id(p) for p in r.hypotheses[0]] for r in found]
    torch_ids = [t.hypotheses[0].tokens for t in translate_lines(trained_transformer, dev, beam_size=1).translations]
    assert_agreement(loaded, dev, torch_ids, ct2_ids, "ctranslate2, greedy")


@pytest.mark.parametrize("layout", ["{not json", '{"memory": ["mask"]}',
                                    '{"memory": [], "state": [], "state_batch_axes": []}', None])
def test_a_damaged_or_tampered_layout_is_refused_in_one_line(trained_run, tmp_path, layout):
    """Garbage, a partial layout, an empty one, or one pointing at another run's checkpoint (`../..`)."""
    from nmt.export.onnx import export_onnx
    from nmt.inference.onnx_runtime import LAYOUT

    run = shutil.copytree(trained_run, tmp_path / "run")
    path = export_onnx(run) / LAYOUT
    if layout is None:
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "checkpoint": "../../other/checkpoints/" + saved["checkpoint"]}))
    else:
        path.write_text(layout)
    with pytest.raises(CheckpointError, match=str(path)) as caught:
        translate_lines(run, ["ab"], runtime="onnx")
    assert "\n" not in str(caught.value)
