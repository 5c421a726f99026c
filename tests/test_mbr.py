"""Minimum Bayes risk decoding: the utility matrix against sacrebleu's own sentence scores, the consensus
choice, duplicates, TER's sign, epsilon sampling, the settings' bounds and conflicts, and MBR on the toy models
through the Translator, the command line, the Python API and nmt tune (the REST API: tests/test_server.py)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml
from sacrebleu.metrics import BLEU, CHRF, TER
from test_cli import run as cli
from test_inference import first_tokens  # the scripted distribution: A 0.5, B 0.4, C 0.1
from toy import reverse_words
from toy_runs import PROBES

import nmt
from nmt.config import DecodingConfig, MbrConfig, parse_config
from nmt.errors import ArgumentError, ConfigError
from nmt.inference import mbr as mbr_module
from nmt.inference import tune as tune_module
from nmt.inference.mbr import pair_utilities, rank_candidates
from nmt.inference.metrics import Score
from nmt.inference.options import DecodingOptions, mbr_settings
from nmt.inference.search import Sampling
from nmt.inference.translate import Translator, translate_lines
from nmt.inference.tune import tune
from nmt.runs.loading import load_model

CANDIDATES = ["the cat sat on the mat", "the cat sat on a mat", "a cat sat on the mat .", "dogs run in the park",
              "", "the cat sat on the mat"]
SACREBLEU = {"chrf": CHRF(), "bleu": BLEU(effective_order=True), "ter": TER()}


@pytest.mark.parametrize("metric", ["chrf", "bleu", "ter"])
def test_the_utility_of_each_pair_is_sacrebleus_own_sentence_score(metric):
    pairs = [(h, r) for h in CANDIDATES for r in CANDIDATES]
    found = pair_utilities(pairs, metric)
    sign = -1 if metric == "ter" else 1
    expected = [sign * SACREBLEU[metric].sentence_score(h, [r]).score for h, r in pairs]
    assert found.tolist() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric", ["chrf", "bleu", "ter"])
def test_the_consensus_wins_and_the_outlier_comes_last(metric):
    near = ["a man rides a red bike down the road", "a man rides a red bike on the road",
            "a man is riding a red bike down the road"]
    outlier = "two dogs play in the snow"
    ranked = rank_candidates([outlier, *near], metric)
    assert ranked.index[0] in (1, 2, 3) and ranked.index[-1] == 0
    assert ranked.utility == sorted(ranked.utility, reverse=True)


def test_expected_utility_is_the_mean_over_the_other_candidates_duplicates_counted_and_compared_once(monkeypatch):
    candidates = ["a b c d", "x y z", "a b c d", "a b c e"]
    scored: list[tuple[str, str]] = []

    def spy(pairs, metric, evaluation=mbr_module.DEFAULT_EVALUATION):
        scored.extend(pairs)
        return pair_utilities(pairs, metric, evaluation)

    monkeypatch.setattr(mbr_module, "pair_utilities", spy)
    ranked = rank_candidates(candidates, "chrf")
    assert len(scored) == len(set(scored))  # every distinct pair once
    assert ("x y z", "x y z") not in scored and ("a b c e", "a b c e") not in scored  # no self-pair of a single
    chrf = CHRF()

    def u(h: str, r: str) -> float:
        return chrf.sentence_score(h, [r]).score

    expected = {  # position of the first occurrence -> mean over the three others
        0: (u("a b c d", "x y z") + u("a b c d", "a b c d") + u("a b c d", "a b c e")) / 3,
        1: (2 * u("x y z", "a b c d") + u("x y z", "a b c e")) / 3,
        3: (2 * u("a b c e", "a b c d") + u("a b c e", "x y z")) / 3,
    }
    assert sorted(ranked.index) == [0, 1, 3]  # distinct texts, each once
    assert dict(zip(ranked.index, ranked.utility, strict=True)) == pytest.approx(expected)
    assert ranked.index[0] == 0  # drawn twice: the likeliest translation


def test_a_beams_n_best_counts_by_its_probability_so_its_tail_does_not_outvote_the_translation():
    """The toy's 4-best of a two-word sentence: counted once each, the variants with a repeated word agree with
    each other and win; weighted by their renormalized probability (itself included), the translation wins."""
    candidates = ["MI LE", "MI LE LE", "MI LE MI", "MI LE LE MI", "MI LE"]
    log_probs = [-0.05, -4.0, -4.5, -5.0, -6.0]  # the last: the same text by another segmentation
    assert rank_candidates(candidates, "chrf").index[0] != 0
    ranked = rank_candidates(candidates, "chrf", log_probs=log_probs)
    assert ranked.index[0] == 0 and sorted(ranked.index) == [0, 1, 2, 3]
    chrf = CHRF()
    posterior = [math.exp(lp) for lp in log_probs]
    mass = {"MI LE": (posterior[0] + posterior[4]) / sum(posterior),
            **{t: p / sum(posterior) for t, p in zip(candidates[1:4], posterior[1:4], strict=True)}}
    for index, utility in zip(ranked.index, ranked.utility, strict=True):
        mine = candidates[index]
        assert utility == pytest.approx(sum(m * chrf.sentence_score(mine, [other]).score
                                            for other, m in mass.items()))


def test_ter_is_negated_so_that_fewer_edits_win():
    ranked = rank_candidates(["a b c d", "a b c d e", "a b x d", "q r s t u v"], "ter")
    assert all(u <= 0 for u in ranked.utility)
    assert ranked.index[-1] == 3 and ranked.index[0] == 0


def test_a_lone_candidate_or_identical_ones():
    assert rank_candidates(["a b"], "chrf").utility == [0.0]
    same = rank_candidates(["a b c", "a b c", "a b c"], "chrf")
    assert same.index == [0] and same.utility == [pytest.approx(100.0)]


def test_epsilon_sampling_never_draws_a_token_below_epsilon_but_always_can_draw_the_best():
    assert set(first_tokens(Sampling(epsilon=0.05, seed=0))) == {4, 5, 6}
    assert set(first_tokens(Sampling(epsilon=0.2, seed=0))) == {4, 5}  # C (0.1) is cut
    assert set(first_tokens(Sampling(epsilon=0.45, seed=0))) == {4}
    assert set(first_tokens(Sampling(epsilon=0.9, seed=0))) == {4}  # below epsilon, the best stays
    with pytest.raises(ConfigError, match="epsilon"):
        Sampling(epsilon=1.0)


@pytest.mark.parametrize(("given", "field", "message"), [
    ({"candidates": 65}, "mbr.candidates", "at most 64"),
    ({"candidates": 1}, "mbr.candidates", "outside 2.."),
    ({"candidates": 2.5}, "mbr.candidates", "not a whole number"),
    ({"source": "nucleus"}, "mbr.source", "'beam' or 'sample'"),
    ({"epsilon": 1.5}, "mbr.epsilon", "less than 1"),
    ({"metric": "comet"}, "mbr.metric", "chrf"),
    ({"seed": 1}, "mbr.seed", "Extra inputs"),
    ("yes", "mbr", "not true, false"),
])
def test_mbr_settings_out_of_bounds_are_one_line_naming_the_key(given, field, message):
    with pytest.raises(ArgumentError) as raised:
        mbr_settings(None, given)
    assert raised.value.field == field and message in raised.value.message and "\n" not in str(raised.value)


def test_a_config_refuses_more_than_64_candidates_naming_the_key(toy_config_path):
    raw = yaml.safe_load(toy_config_path.read_text())
    raw["decoding"] = {"mbr": {"candidates": 65}}
    with pytest.raises(ConfigError, match="decoding.mbr.candidates"):
        parse_config(raw)


def test_the_runs_mbr_is_on_by_default_and_what_the_caller_asks_for_wins():
    own = DecodingConfig(beam_size=3, n_best=2, mbr=MbrConfig(candidates=8, source="beam"))
    found = DecodingOptions.resolve(own)
    assert found.mbr == own.mbr and found.beam_size == 8 and found.rows == 8 and found.n_best == 2
    assert DecodingOptions.resolve(own, beam_size=5).mbr is None  # a beam asked for: the search
    assert DecodingOptions.resolve(own, exclusive="streaming").mbr is None
    assert DecodingOptions.resolve(own, mbr=False).mbr is None
    merged = DecodingOptions.resolve(own, mbr={"candidates": 4, "metric": "ter"}).mbr
    assert merged == MbrConfig(candidates=4, source="beam", metric="ter")  # over the run's settings
    defaults = DecodingOptions.resolve(DecodingConfig(), mbr=True)
    assert defaults.mbr == MbrConfig(source="beam") and defaults.beam_size == 16 and defaults.rows == 16
    sampled = DecodingOptions.resolve(DecodingConfig(), mbr={"source": "sample"})
    assert sampled.beam_size == 1 and sampled.rows == 16
    assert DecodingOptions.resolve(DecodingConfig(mbr=MbrConfig(source="sample")), constrained=True).mbr is None
    assert DecodingOptions.resolve(DecodingConfig(mbr=MbrConfig()), constrained=True).mbr == MbrConfig()


@pytest.mark.parametrize(("options", "field"), [
    ({"beam_size": 4}, "beam_size"), ({"exclusive": "sampling"}, "mbr"), ({"exclusive": "n_alternatives"}, "mbr"),
    ({"constrained": True}, "constraint"), ({"n_best": 17}, "n_best")])
def test_mbr_asked_for_with_what_it_does_not_do_is_refused(options, field):
    with pytest.raises(ArgumentError) as raised:
        DecodingOptions.resolve(DecodingConfig(), mbr={"source": "sample"}, **options)
    assert raised.value.field == field


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_each_sentences_draws_are_rows_of_its_own(fixture, request):
    """A draw that can only be the best token is the greedy translation: every draw of every sentence of a batch
    of several lengths is its own sentence's (a draw read from another sentence's memory would not be)."""
    loaded = load_model(request.getfixturevalue(fixture))
    translator = Translator.for_run(loaded)
    sources = translator.encode(PROBES)
    greedy = [h[0].tokens for h in translator.search_ids(sources, 1)]
    drawn = translator.search_ids(sources, 1, sampling=Sampling(top_k=1, seed=3), draws=5)
    assert [[h.tokens for h in hyps] for hyps in drawn] == [[tokens] * 5 for tokens in greedy]


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_mbr_translates_the_toy_task_and_repeats_with_a_seed(fixture, request):
    translator = Translator.for_run(load_model(request.getfixturevalue(fixture)))
    settings = {"candidates": 8, "epsilon": 0.0, "source": "sample"}
    first = translator.translate(PROBES, mbr=settings, seed=7)
    assert [t.text for t in first] == [reverse_words(s) for s in PROBES]
    assert all(t.utilities and len(t.utilities) == 1 for t in first)
    again = [translator.translate(PROBES, mbr=settings, seed=7, n_best=8) for _ in range(2)]
    assert [(t.texts, t.utilities) for t in again[0]] == [(t.texts, t.utilities) for t in again[1]]


def test_the_n_best_of_mbr_are_its_distinct_candidates_by_expected_utility(trained_run):
    translator = Translator.for_run(load_model(trained_run))
    found = translator.translate(PROBES, n_best=4, mbr={"candidates": 6, "source": "beam"})
    for t in found:
        assert t.utilities == sorted(t.utilities, reverse=True) and len(t.texts) == len(set(t.texts)) > 1
        assert len(t.hypotheses) == len(t.texts) == len(t.utilities) <= 4
    assert translator.translate(PROBES[:1], mbr={"candidates": 6, "source": "beam"})[0].text == found[0].text


def test_a_runs_decoding_mbr_decodes_its_translations_unless_a_beam_is_asked_for(trained_run):
    own = ["decoding.mbr={candidates: 4, source: beam}"]
    done = translate_lines(trained_run, PROBES, overrides=own)
    assert done.mbr == MbrConfig(candidates=4, source="beam") and done.translations[0].utilities
    searched = translate_lines(trained_run, PROBES, beam_size=3, overrides=own)
    assert searched.mbr is None and searched.translations[0].utilities is None


def test_mbr_from_the_command_line(trained_run):
    result = cli("translate", "--model", trained_run, "--mbr-source", "sample", "--mbr-candidates", "6", "--seed", "2",
                 PROBES[0])
    assert result.returncode == 0, result.stderr
    assert result.stdout == reverse_words(PROBES[0]) + "\n"
    listed = cli("translate", "--model", trained_run, "--mbr-source", "beam", "--mbr-candidates", "4", "--n-best",
                 "3", PROBES[1])
    assert listed.returncode == 0, listed.stderr
    utilities = [float(line.split("\t")[1]) for line in listed.stdout.splitlines()]
    assert utilities == sorted(utilities, reverse=True) and 1 < len(utilities) <= 3


@pytest.mark.parametrize(("flags", "message"), [
    (["--mbr", "--sample"], "error: --mbr: chooses among candidates it decodes itself: it does not go with sampling"),
    (["--mbr", "--stream"], "error: --mbr: chooses among candidates it decodes itself: it does not go with streaming"),
    (["--mbr", "--n-alternatives", "2"], "error: --mbr: chooses among candidates it decodes itself: it does not "
                                         "go with n_alternatives"),
    (["--mbr-candidates", "65"], "error: --mbr-candidates: 65: MBR compares at most 64 candidates"),
    (["--mbr", "--beam-size", "3"], "error: --beam-size: goes with the search, not with MBR"),
    (["--mbr-metric", "comet"], "error: --mbr-metric: Input should be 'chrf', 'bleu' or 'ter'"),
    (["--no-mbr", "--mbr-candidates", "4"], "--no-mbr"),
    (["--seed", "3"], "error: --seed: draws MBR's sampled candidates"),
])
def test_mbr_flags_that_make_no_sense_exit_2_in_one_line(trained_run, flags, message):
    result = cli("translate", "--model", trained_run, *flags, PROBES[0])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_mbr_evaluation_keeps_its_own_files(trained_run, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval")))
    plain = cli("evaluate", "--model", run, "--split", "dev", "--beam-size", "1")
    chosen = cli("evaluate", "--model", run, "--split", "dev", "--mbr", "--mbr-candidates", "4")
    assert plain.returncode == 0 and chosen.returncode == 0, chosen.stderr
    assert "MBR: 4 beam candidates, chrf" in chosen.stdout
    files = sorted(p.name for p in (run / "eval").glob("*.hyp"))
    assert files == ["dev.beam1.hyp", "dev.mbr-beam4-chrf.beam4.hyp"]  # one does not overwrite the other


def test_mbr_from_python(trained_run):
    run = nmt.load(trained_run)
    assert [t.text for t in run.translate(PROBES, mbr=True)] == [reverse_words(s) for s in PROBES]
    found = run.translate(PROBES, mbr={"candidates": 6, "source": "beam"}, n_best=3)
    for t in found:
        utilities = [h.utility for h in t.hypotheses]
        assert utilities == sorted(utilities, reverse=True) and None not in utilities
    assert all(h.utility is None for t in run.translate(PROBES) for h in t.hypotheses)
    with pytest.raises(ArgumentError) as raised:
        run.translate(PROBES, mbr={"candidates": 65})
    assert raised.value.field == "mbr.candidates" and "at most 64" in str(raised.value)
    with pytest.raises(ArgumentError, match="beam_size"):
        run.translate(PROBES, beam_size=3, mbr=True)
    assert run.evaluate(split="dev", mbr={"candidates": 4}).bleu >= 80


def test_tune_adds_mbr_to_the_grid_and_writes_it_when_it_wins(trained_run, tmp_path, monkeypatch):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    found = tune(run, beams=[1], penalties=[0.0], mbr=True, write=False)
    assert [p.mbr for p in found.points].count(MbrConfig()) == 1

    real = tune_module.decode_and_score

    def mbr_wins(translator, data, evaluation, beam_size=None, progress=False, mbr=None, seed=None):
        """MBR scores above any search (the toy searches reach BLEU 100)."""
        decoded = real(translator, data, evaluation, beam_size, progress, mbr, seed)
        if isinstance(mbr, MbrConfig):
            decoded.bleu = Score(decoded.bleu.name, 101.0, decoded.bleu.signature)
        return decoded

    monkeypatch.setattr(tune_module, "decode_and_score", mbr_wins)
    best = tune(run, beams=[1, 3], penalties=[0.0], mbr=True).best
    assert best.mbr == MbrConfig()
    written = load_model(run).config.decoding
    assert written.mbr == MbrConfig() and written.tuned is not None
    assert DecodingOptions.resolve(written).mbr == MbrConfig()  # the run now decodes by MBR by default
    monkeypatch.setattr(tune_module, "decode_and_score", real)
    again = tune(run, beams=[1], penalties=[0.0])  # its MBR is the current point; a search may replace it
    assert any(p.current and p.mbr == MbrConfig() for p in again.points)


def test_nmt_translate_help_lists_the_mbr_and_quality_flags():
    result = cli("translate", "--help")
    for flag in ("--mbr", "--no-mbr", "--mbr-candidates", "--mbr-source", "--mbr-metric", "--scores",
                 "--min-quality"):
        assert flag in result.stdout
