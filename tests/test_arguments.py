"""One argument-checking layer (nmt.inference.arguments) for the Python API, the command line and the server:
every mistake is an `ArgumentError` naming the argument, the same bounds everywhere, and texts given as one
string or a sequence (never iterated over as characters)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from toy import reverse_words
from toy_runs import PROBES
from typer.testing import CliRunner

import nmt
from nmt.cli import app
from nmt.config import MAX_BEAM
from nmt.errors import ArgumentError, NmtError
from nmt.inference import arguments


@pytest.mark.parametrize(("call", "field", "message"), [
    (lambda run: run.translate("ab", beam_size=0), "beam_size", "0 is outside 1..64"),
    (lambda run: run.translate("ab", beam_size=-1), "beam_size", "-1 is outside"),
    (lambda run: run.translate("ab", beam_size=10_000), "beam_size", "10000 is outside 1..64"),
    (lambda run: run.translate("ab", beam_size=2.5), "beam_size", "2.5 is not a whole number"),
    (lambda run: run.translate("ab", beam_size=True), "beam_size", "True is not a whole number"),
    (lambda run: run.translate("ab", n_best=0), "n_best", "0 is outside"),
    (lambda run: run.translate("ab", beam_size=2, n_best=3), "n_best", "cannot exceed the beam size (2)"),
    (lambda run: run.translate("ab", length_penalty=math.nan), "length_penalty", "nan is outside 0..10"),
    (lambda run: run.translate("ab", length_penalty=math.inf), "length_penalty", "inf is outside"),
    (lambda run: run.translate("ab", length_penalty=-0.5), "length_penalty", "-0.5 is outside"),
    (lambda run: run.translate(["ab", "\ud800 ca"]), "texts[1]", "character 1 is a lone surrogate"),
    (lambda run: run.translate(["ab", None]), "texts[1]", "NoneType is not a text"),
    (lambda run: run.translate(b"ab"), "texts", "bytes is not a text or a sequence of texts"),
    (lambda run: run.translate({"ab": 1}), "texts", "dict is not a text or a sequence of texts"),
    (lambda run: run.translate("ab", beam_size=10**5000), "beam_size", "digits is outside 1..64"),
    (lambda run: run.translate("ab", length_penalty=10**400), "length_penalty", "is outside 0..10"),
    (lambda run: run.attribution(" \u200b "), "text", "is empty or only whitespace"),
    (lambda run: run.attribution("ab", steps=5000), "steps", "5000 is outside 1..1024"),
    (lambda run: run.attention("ab", threshold=math.nan), "threshold", "nan is outside 0..1"),
    (lambda run: run.attention("ab", threshold=2), "threshold", "2.0 is outside 0..1"),
    (lambda run: run.attention("ab", kind="self"), "kind", "'self' is not one of cross"),
    (lambda run: run.attention(["ab"]), "text", "list is not a text"),
    (lambda run: run.attribution("ab", steps=0), "steps", "0 is outside 1.."),
    (lambda run: run.attribution("ab", method="gradients"), "method", "is not one of input_x_gradient"),
    (lambda run: run.score(["ab", "ca"], ["ba"]), "targets", "1 texts for 2 sources"),
    (lambda run: run.evaluate(sources="ab", references=["ba", "ca"]), "references", "2 texts for 1 sources"),
    (lambda run: run.evaluate(sources=[], references=[]), "sources", "no texts to evaluate"),
])
def test_api_mistakes_are_argument_errors_naming_the_argument(trained_run, call, field, message):
    run = nmt.load(trained_run)
    with pytest.raises(ArgumentError) as raised:
        call(run)
    assert raised.value.field == field and message in raised.value.message
    assert isinstance(raised.value, NmtError) and raised.value.exit_code == 2


def test_numpy_numbers_are_numbers_and_bounds_are_inclusive(trained_run):
    run = nmt.load(trained_run)
    [found] = run.translate("ab ca", beam_size=np.int64(2), n_best=np.int32(2), length_penalty=np.float32(1.0))
    assert len(found.hypotheses) == 2
    assert arguments.integer(MAX_BEAM, "beam_size", 1, MAX_BEAM) == MAX_BEAM
    assert arguments.number(0, "threshold", 0.0, 1.0) == 0.0


def test_texts_come_from_any_iterable_and_argument_errors_cross_processes(trained_run):
    run = nmt.load(trained_run)
    expected = [t.text for t in run.translate(PROBES[:2])]
    assert [t.text for t in run.translate(np.array(PROBES[:2]))] == expected
    assert [t.text for t in run.translate(s for s in PROBES[:2])] == expected
    from nmt.serve.service import ClientError

    for error in (ArgumentError("beam_size", "0 is outside 1..64"), ClientError("text", "too long", 413)):
        copied = pickle.loads(pickle.dumps(error))  # how the attribution child's errors reach the server
        assert (type(copied), str(copied), copied.field, getattr(copied, "status", None)) == \
            (type(error), str(error), error.field, getattr(error, "status", None))


def test_one_string_is_one_text_for_score_and_evaluate(trained_run):
    run = nmt.load(trained_run)
    source = PROBES[0]
    [one] = run.score(source, reverse_words(source))
    assert one.index == 0 and len(one.tokens) > 1  # subwords of the sentence, not one character
    listed = run.score([source], [reverse_words(source)])[0]
    assert one.log_prob == pytest.approx(listed.log_prob)
    found = run.evaluate(sources=source, references=reverse_words(source))
    assert found.sentences == 1 and found.hypotheses == [reverse_words(source)] \
        and found.scores[1].score == pytest.approx(100)  # chrF: BLEU has no 4-grams here


def test_a_checkpoint_is_chosen_by_name_and_a_wrong_name_is_refused(trained_run):
    steps = sorted(p.name for p in (trained_run / "checkpoints").glob("step-*"))
    assert len(steps) >= 2, "the toy run keeps at least two checkpoints"
    oldest = nmt.load(trained_run, checkpoint=steps[0])
    assert oldest.checkpoint == steps[0] and nmt.load(trained_run, checkpoint="last").checkpoint == steps[-1]
    for wrong in ("step-99999999", "../../etc", "lsat", ""):
        with pytest.raises(ArgumentError, match="is not best, last, averaged, ema or a checkpoint of") as raised:
            nmt.load(trained_run, checkpoint=wrong)
        assert raised.value.field == "checkpoint" and steps[-1] in raised.value.message
    runner = CliRunner()
    shown = runner.invoke(app, ["translate", "--model", str(trained_run), "--checkpoint", steps[0], PROBES[0]])
    assert shown.exit_code == 0, shown.output
    refused = runner.invoke(app, ["translate", "--model", str(trained_run), "--checkpoint", "lsat", PROBES[0]])
    assert refused.exit_code == 2 and refused.output.startswith("error: --checkpoint: 'lsat' is not best")
    assert "Traceback" not in refused.output


def test_the_cli_names_its_own_option_for_an_argument_error(trained_transformer):
    runner = CliRunner()
    found = runner.invoke(app, ["attention", "--model", str(trained_transformer), "--layer", "7", PROBES[0]])
    assert found.exit_code == 2
    assert found.output.strip().splitlines() == ["error: --layer: 7 is outside 1..2: the model has 2 layers"]
