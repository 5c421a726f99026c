"""The inference tools: decoding tuned on dev, checkpoint averaging, ensembles, forced-decoding scores,
sampling, int8 decoding. Each against the trained toy model or a scripted distribution."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from test_search import BOS, EOS, PAD, NoMemory, PrefixState, scripted_step  # the scripted distribution
from toy import reverse_words
from toy_runs import PROBES

from nmt.data.splits import eval_set
from nmt.errors import CheckpointError, ConfigError, DataError
from nmt.inference.search import Sampling, greedy_search
from nmt.inference.translate import Translator, translate_lines
from nmt.runs.loading import load_model, load_run_config
from nmt.runs.rundir import RunDir

pytestmark = pytest.mark.numerics  # floating-point results: run again on AVX2 kernels

SOURCES = ["ab ca de fo", "gu hi jo", "ku le mi no pa", "ca ca"]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the shared trained run, for the tools that write into a run directory."""
    return shutil.copytree(trained_run, tmp_path / "run")


def first_tokens(sampling: Sampling, draws: int = 4000) -> Counter:
    found = greedy_search(scripted_step, NoMemory(), PrefixState([()] * draws), torch.full((draws,), 1), BOS, EOS, PAD,
                          sampling.picker(torch.device("cpu")))
    return Counter(h.tokens[0] if h.tokens else EOS for h in found)


def test_sampling_follows_the_distribution_and_its_cuts():
    counts = first_tokens(Sampling(seed=0))
    assert counts[4] / 4000 == pytest.approx(0.5, abs=0.03) and counts[5] / 4000 == pytest.approx(0.4, abs=0.03)
    assert counts[6] / 4000 == pytest.approx(0.1, abs=0.02)
    assert set(first_tokens(Sampling(top_k=2, seed=0))) == {4, 5}  # the least probable token is cut
    assert set(first_tokens(Sampling(top_p=0.5, seed=0))) == {4}  # A alone reaches 0.5
    assert set(first_tokens(Sampling(top_p=0.6, seed=0))) == {4, 5}
    flat = first_tokens(Sampling(temperature=100.0, seed=0))
    assert flat[6] / 4000 == pytest.approx(1 / 3, abs=0.04)  # a high temperature flattens the three choices


def test_sampled_translations_repeat_with_a_seed_and_score_their_own_tokens(trained_run):
    hot = Sampling(temperature=3.0, seed=5)
    first = translate_lines(trained_run, SOURCES * 5, sampling=hot).translations
    again = translate_lines(trained_run, SOURCES * 5, sampling=hot).translations
    other = translate_lines(trained_run, SOURCES * 5, sampling=Sampling(temperature=3.0, seed=6)).translations
    assert [t.text for t in first] == [t.text for t in again]
    assert [t.text for t in first] != [t.text for t in other]
    greedy = translate_lines(trained_run, SOURCES, beam_size=1).translations
    top1 = translate_lines(trained_run, SOURCES, sampling=Sampling(top_k=1, seed=1)).translations
    assert [t.text for t in top1] == [t.text for t in greedy]


def test_forced_decoding_scores_equal_the_searchs_own_log_probabilities(trained_run):
    from nmt.inference.forced import score_pairs

    greedy = translate_lines(trained_run, SOURCES, beam_size=1).translations
    scored = score_pairs(trained_run, SOURCES, [t.text for t in greedy])
    for translation, pair in zip(greedy, scored, strict=True):
        assert pair.log_prob == pytest.approx(translation.hypotheses[0].log_prob, abs=1e-4)
        assert pair.tokens[-1] == "</s>" and len(pair.tokens) == len(pair.token_log_probs)
    wrong = score_pairs(trained_run, SOURCES, ["AB AB AB"] * len(SOURCES))
    assert all(w.log_prob < s.log_prob - 1 for w, s in zip(wrong, scored, strict=True))
    with pytest.raises(DataError, match="3 source lines but 1 translations"):
        score_pairs(trained_run, SOURCES[:3], ["x"])


def test_tune_keeps_the_best_grid_point_and_records_it(run_copy):
    from nmt.inference.tune import tune

    before = load_run_config(RunDir(run_copy)).decoding
    found = tune(run_copy, beams=[1, 2], penalties=[0.0, 1.0])
    current = next(p for p in found.points if p.current)
    assert (current.beam_size, current.length_penalty) == (before.beam_size, before.length_penalty)
    assert found.best.bleu >= max(p.bleu for p in found.points) - 0.005 and found.best.bleu >= current.bleu
    assert {(p.beam_size, p.length_penalty) for p in found.points} >= {(1, 0.0), (2, 0.0), (2, 1.0)}
    after = load_run_config(RunDir(run_copy)).decoding
    assert (after.beam_size, after.length_penalty) == (found.best.beam_size, found.best.length_penalty)
    assert after.tuned is not None and after.tuned.split == "dev"
    assert after.tuned.before["beam_size"] == before.beam_size
    untouched = RunDir(run_copy).config_path.read_text()
    tune(run_copy, beams=[1], penalties=[0.0], write=False)
    assert RunDir(run_copy).config_path.read_text() == untouched


def test_average_of_the_last_two_checkpoints_is_their_mean_and_selectable(run_copy):
    from nmt.inference.average import average

    run = RunDir(run_copy)
    steps = [int(f.folder.name.split("-")[1]) for f in run.checkpoints()]
    assert len(steps) >= 2
    found = average(run_copy, last=2)
    assert found.steps == steps[-2:]
    averaged = load_file(str(run.averaged_checkpoint().weights))
    a, b = (load_file(str(run.checkpoint(s).weights)) for s in steps[-2:])
    for name in averaged:
        assert torch.allclose(averaged[name], (a[name] + b[name]) / 2, atol=1e-6)
    assert [f.folder.name for f in run.checkpoints()] == [f"step-{s:08d}" for s in steps]  # not a step checkpoint
    loaded = load_model(run_copy, "averaged")
    assert loaded.checkpoint.meta["averaged_steps"] == steps[-2:]
    assert translate_lines(run_copy, SOURCES, checkpoint="averaged").translations[0].text
    with pytest.raises(CheckpointError, match="3 checkpoints asked for"):
        average(run_copy, last=3)
    with pytest.raises(ConfigError, match="either --last K or --best K"):
        average(run_copy)


def test_an_ensemble_averages_the_members_probabilities(trained_run, run_copy):
    from nmt.inference.ensemble import Ensemble, load_models

    twice = translate_lines([trained_run, run_copy], SOURCES, beam_size=3).translations
    single = translate_lines(trained_run, SOURCES, beam_size=3).translations
    assert [t.text for t in twice] == [t.text for t in single]  # a model with itself changes nothing

    first, second = load_model(trained_run, "best").model, load_model(trained_run, "last").model
    with torch.no_grad():
        for param in second.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ensemble = Ensemble([first, second])
    loaded = load_models([trained_run])
    src = torch.tensor(Translator.for_run(loaded).encode(["ab ca de"]))
    mask = torch.ones_like(src, dtype=torch.bool)
    lengths = torch.tensor([src.shape[1]])
    prev = torch.tensor([BOS])
    with torch.no_grad():
        memory, state = ensemble.encode(src, lengths, mask)
        mixed, _, weights = ensemble.step_log_probs(prev, state, memory)
        p1 = first.step_log_probs(prev, *reversed(first.encode(src, lengths, mask)))[0].exp()
        p2 = second.step_log_probs(prev, *reversed(second.encode(src, lengths, mask)))[0].exp()
    assert torch.allclose(mixed.exp(), (p1 + p2) / 2, atol=1e-6)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(1), atol=1e-5) and weights.shape == (1, src.shape[1])


def test_an_ensemble_refuses_runs_with_other_vocabularies(trained_run, trained_transformer):
    from nmt.inference.ensemble import load_models

    with pytest.raises(ConfigError, match="SentencePiece models differ"):
        load_models([trained_run, trained_transformer])


def test_int8_decoding_quantizes_linear_and_rnn_layers_and_keeps_the_translations(trained_run, trained_transformer):
    from torch.ao.nn.quantized import dynamic

    for run in (trained_run, trained_transformer):
        quantized = load_model(run, quantize="int8").model
        kinds = {type(m) for m in quantized.modules()}
        assert dynamic.Linear in kinds and torch.nn.Linear not in kinds
        dev = eval_set(load_run_config(RunDir(run)).data)
        fp32 = [t.text for t in translate_lines(run, dev.sources, beam_size=1).translations]
        int8 = [t.text for t in translate_lines(run, dev.sources, beam_size=1, quantize="int8").translations]
        assert sum(a == b for a, b in zip(fp32, int8, strict=True)) >= 0.95 * len(fp32)
        assert sum(a == b for a, b in zip(int8, dev.references, strict=True)) >= 0.7 * len(fp32)  # still translates
    assert dynamic.GRU in {type(m) for m in load_model(trained_run, quantize="int8").model.modules()}
    with pytest.raises(ConfigError, match="int4"):
        load_model(trained_run, quantize="int4")


def test_the_cli_tools_end_to_end(run_copy, tmp_path):
    from typer.testing import CliRunner

    from nmt.cli import app

    cli = CliRunner()
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s in SOURCES))
    hyps = cli.invoke(app, ["translate", "--model", str(run_copy), "--input", str(tmp_path / "src.txt")])
    assert hyps.exit_code == 0, hyps.output
    (tmp_path / "hyp.txt").write_text(hyps.stdout)
    scored = cli.invoke(app, ["score", "--model", str(run_copy), "--src", str(tmp_path / "src.txt"), "--ref",
                              str(tmp_path / "hyp.txt")])
    assert scored.exit_code == 0, scored.output
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [r["index"] for r in rows] == list(range(len(SOURCES))) and all(r["log_prob"] <= 0 for r in rows)
    assert math.isclose(sum(rows[0]["token_log_probs"]), rows[0]["log_prob"], abs_tol=1e-3)
    sampled = cli.invoke(app, ["translate", "--model", str(run_copy), "--sample", "--seed", "1", "ab ca"])
    assert sampled.exit_code == 0, sampled.output
    misuse = cli.invoke(app, ["translate", "--model", str(run_copy), "--top-k", "3", "ab ca"])
    assert misuse.exit_code == 2 and "go with --sample" in misuse.output
    cold = cli.invoke(app, ["translate", "--model", str(run_copy), "--sample", "--temperature", "0", "ab ca"])
    assert cold.exit_code == 2 and "temperature 0.0: must be above 0" in cold.output

    tuned = cli.invoke(app, ["tune", "--model", str(run_copy), "--beams", "1,2", "--length-penalties", "0",
                             "--dry-run"])
    assert tuned.exit_code == 0 and "best: beam" in tuned.stdout and "not written" in tuned.stdout
    bad = cli.invoke(app, ["tune", "--model", str(run_copy), "--beams", "1,x"])
    assert bad.exit_code == 2 and "--beams" in bad.output
    averaged = cli.invoke(app, ["average", "--model", str(run_copy), "--last", "2"])
    assert averaged.exit_code == 0 and "averaged steps" in averaged.stdout, averaged.output
    evaluated = cli.invoke(app, ["evaluate", "--model", str(run_copy), "--checkpoint", "averaged", "--quantize",
                                 "int8"])
    assert evaluated.exit_code == 0 and "BLEU" in evaluated.stdout, evaluated.output


@pytest.mark.parametrize("settings,message", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top-p"),
    ({"top_p": 1.5}, "top-p"), ({"top_k": -1}, "top-k"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"), ({"seed": 10**23}, "seed"), ({"seed": -1}, "seed")])
def test_sampling_settings_are_checked_where_they_are_defined(settings, message):
    with pytest.raises(ConfigError, match=message):
        Sampling(**settings)


@pytest.mark.parametrize("beams,penalties,message", [
    ([], [0.0], "at least one"), ([0, 3], [0.0], "beam sizes go from 1"), ([65], [0.0], "beam sizes go from 1"),
    ([1], [-0.5], "a length penalty is a number from 0 to 10"), ([1], [math.nan], "from 0 to 10"),
    ([1], [math.inf], "from 0 to 10"), ([1], [10.5], "from 0 to 10")])
def test_the_tune_grid_is_checked_where_it_is_defined(beams, penalties, message):
    from nmt.inference.tune import grid

    with pytest.raises(ConfigError, match=message):
        grid(beams, penalties, (5, 0.0))


def test_a_vanishing_temperature_samples_what_greedy_search_finds(trained_run):
    """1e-40 used to overflow every logit to -inf (a NaN distribution and a traceback): it is greedy search."""
    greedy = translate_lines(trained_run, SOURCES, beam_size=1).translations
    cold = translate_lines(trained_run, SOURCES, sampling=Sampling(temperature=1e-40, seed=1)).translations
    assert [t.text for t in cold] == [t.text for t in greedy]


def test_a_transformer_truncates_what_it_cannot_encode_and_its_batch_mates_translate(trained_transformer, caplog):
    """The model's real input limit is the smaller of decoding.max_src_tokens and its position table: a longer
    input used to crash the whole batch (`sequence of 81 positions is longer than max_positions 64`)."""
    loaded = load_model(trained_transformer)
    loaded.model.max_positions = 12  # what model.transformer.max_positions: 12 would have built
    translator = Translator.for_run(loaded)
    assert translator.source_limit == (12, "model.transformer.max_positions")
    with caplog.at_level("WARNING"):
        found = translator.translate([" ".join(["ab ca de fo"] * 10), *PROBES], beam_size=3)
    assert "input line 1 has" in caplog.text and "truncated to 12 (model.transformer.max_positions)" in caplog.text
    assert len(found[0].src_ids) == 12 and len(found[0].hypotheses[0].tokens) <= 12  # outputs stop there too
    assert [t.text for t in found[1:]] == [reverse_words(p) for p in PROBES]


def test_forced_decoding_scores_the_start_of_a_huge_translation_and_flags_it(trained_run, caplog):
    """A 600 KB translation line used to take 73 s and 7.6 GB: it is cut to what the model takes, with a
    warning and a flag in its row."""
    from nmt.inference.forced import score_pairs

    limit = load_run_config(RunDir(trained_run)).decoding.max_src_tokens
    with caplog.at_level("WARNING"):
        scored = score_pairs(trained_run, ["ab ca", "ab ca"], ["CA AB " * 100_000, "CA AB"])
    assert "translation line 1 has" in caplog.text
    assert scored[0].truncated and len(scored[0].tokens) == len(scored[0].token_log_probs) == limit - 1
    assert "</s>" not in scored[0].tokens and scored[0].as_dict()["truncated"] is True
    assert not scored[1].truncated and scored[1].tokens[-1] == "</s>"


def test_average_survives_the_pruning_of_a_checkpoint_it_is_reading(run_copy, monkeypatch):
    """What a live trainer with keep_last 1 does between average's choice and its read: publish a newer
    checkpoint and prune (the real write_checkpoint and prune). Average reads again and uses the newer one."""
    import nmt.inference.average as averaging
    from nmt.runs.checkpoint import latest_intact, load_train_state, prune, write_checkpoint

    run = RunDir(run_copy)
    newest = latest_intact(run)
    assert newest is not None and len(run.checkpoints()) == 2
    read = averaging.mean_weights
    moved = []

    def trainer_moves_on(chosen):
        if not moved:
            moved.append(newest.step + 1)
            write_checkpoint(run, run.checkpoint(newest.step + 1), load_file(str(newest.files.weights)),
                             load_train_state(newest), {**newest.meta, "step": newest.step + 1, "dev_bleu": None})
            prune(run, keep_last=1)  # keeps the new one and the best: one of the two chosen goes
            assert not all(c.path.is_dir() for c in chosen)
        return read(chosen)

    monkeypatch.setattr(averaging, "mean_weights", trainer_moves_on)
    found = averaging.average(run_copy, last=2)
    assert moved and found.steps[-1] == moved[0]
