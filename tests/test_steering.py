"""Steered decoding: forced prefixes, lexical constraints (dynamic beam allocation), no repeated n-grams, the
repetition penalty, alternatives and streamed tokens. Invariants over random step functions and the trained toy
model, and the beam-of-one search against a plain loop that tries every token."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from test_search import NoMemory, PrefixState
from typer.testing import CliRunner

from nmt.cli import app
from nmt.errors import ArgumentError, DataError
from nmt.inference.controls import Controls
from nmt.inference.search import Sampling, beam_search, greedy_search
from nmt.inference.steer import Glossary, Steer, line_constraints, steer_lines
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model

pytestmark = pytest.mark.numerics  # floating-point choices: run again on AVX2 kernels

PAD, BOS, EOS = 0, 2, 3
V = 9  # tokens 4..8 are words


def random_step(seed: int, eos_bias: float = 0.0, markov: bool = False):
    """A step function whose distribution depends only on the prefix (`markov`: on its last token, so that the
    best path loops), drawn at random (seeded by it)."""

    def distribution(prefix: tuple[int, ...]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash((seed, prefix[-1:] if markov else prefix)) % 2**31)
        logits = torch.randn(V, generator=generator) * 2
        logits[EOS] += eos_bias
        logits[[PAD, 1, BOS]] = float("-inf")
        return logits.log_softmax(-1)

    def step(prev: torch.Tensor, state: PrefixState, memory: NoMemory):
        prefixes = [p if token == BOS else p + (token,) for p, token in zip(state.prefixes, prev.tolist(),
                                                                             strict=True)]
        return (torch.stack([distribution(p) for p in prefixes]), PrefixState(prefixes),
                torch.full((len(prefixes), 3), 1 / 3))

    return step, distribution


def contains(tokens: list[int], phrase: list[int]) -> bool:
    return any(tokens[i:i + len(phrase)] == phrase for i in range(len(tokens) - len(phrase) + 1))


def search(step, batch: int, limit: int, beam: int, controls: Controls, n_best: int = 1):
    state, lengths = PrefixState([()] * batch), torch.full((batch,), limit)
    if beam == 1 and not controls.constrained:
        return [[h] for h in greedy_search(step, NoMemory(), state, lengths, BOS, EOS, PAD, controls=controls)]
    return beam_search(step, NoMemory(), state, lengths, beam, BOS, EOS, PAD, 0.5, n_best, controls=controls)


CONSTRAINT_SETS = [[[5]], [[6, 7]], [[4, 4], [8]], [[7, 5, 6], [5]], [[4], [5], [6]], []]


@pytest.mark.parametrize("beam", [1, 2, 5])
@pytest.mark.parametrize("seed", range(4))
def test_every_constraint_appears_in_the_best_hypothesis_when_the_length_allows(seed, beam):
    """The n-best: those with every phrase first; one without can follow only where the length limit ended it."""
    step, _ = random_step(seed, eos_bias=2.0)  # eager to end: the constraints must hold it back
    controls = Controls(constraints=CONSTRAINT_SETS)
    found = search(step, len(CONSTRAINT_SETS), 10, beam, controls, n_best=beam)
    for phrases, hyps in zip(CONSTRAINT_SETS, found, strict=True):
        finite = [h for h in hyps if math.isfinite(h.score)]
        complete = [all(contains(h.tokens, p) for p in phrases) for h in finite]
        assert complete[0] and complete == sorted(complete, reverse=True), (phrases, [h.tokens for h in hyps])
        assert all(h.ended or len(h.tokens) == 10 for h, done in zip(finite, complete, strict=True) if not done)
    unconstrained = search(step, len(CONSTRAINT_SETS), 10, beam, Controls(), n_best=beam)
    assert found[-1][0].tokens == unconstrained[-1][0].tokens  # a sentence without constraints searches as before


def next_progress(met: set[int], active: int | None, position: int, token: int, phrases: list[list[int]]
                  ) -> tuple[set[int], int | None, int]:
    """The constraint progress after `token`, written plainly (the reference of ConstraintBanks.advance)."""
    met = set(met)
    if active is not None and phrases[active][position] == token:
        if position + 1 == len(phrases[active]):
            return met | {active}, None, 0
        return met, active, position + 1
    for i, phrase in enumerate(phrases):
        if i not in met and phrase[0] == token:
            return (met | {i}, None, 0) if len(phrase) == 1 else (met, i, 1)
    return met, None, 0


def one_beam_by_hand(distribution, limit: int, prefix: list[int], phrases: list[list[int]]) -> list[int]:
    """A beam of one, by trying every token each step: the forced prefix token, else the token that leaves the
    most constraint tokens met, the most probable among those; EOS only once every phrase is met."""
    tokens: list[int] = []
    met: set[int] = set()
    active, position = None, 0
    for t in range(limit):
        log_probs = distribution(tuple(tokens)).clone()
        if len(met) < len(phrases):
            log_probs[EOS] = float("-inf")
        if t < len(prefix):
            choice = prefix[t]
        else:
            ranked = []
            for token in range(V):
                if log_probs[token] > float("-inf"):
                    after = next_progress(met, active, position, token, phrases)
                    ranked.append((sum(len(phrases[i]) for i in after[0]) + after[2], float(log_probs[token]), token))
            choice = max(ranked)[2]
        met, active, position = next_progress(met, active, position, choice, phrases)
        tokens.append(choice)
        if choice == EOS:
            return tokens[:-1]
    return tokens


@pytest.mark.parametrize("seed", range(6))
def test_a_beam_of_one_with_prefix_and_constraints_equals_trying_every_token(seed):
    step, distribution = random_step(seed)
    prefixes = [[], [6], [4, 5], [], [8, 8], [7]]
    found = search(step, len(CONSTRAINT_SETS), 9, 1, Controls(prefixes=prefixes, constraints=CONSTRAINT_SETS))
    for prefix, phrases, hyps in zip(prefixes, CONSTRAINT_SETS, found, strict=True):
        assert hyps[0].tokens == one_beam_by_hand(distribution, 9, prefix, phrases)


@pytest.mark.parametrize("beam", [1, 3])
def test_a_prefix_begins_every_hypothesis_and_greedy_then_takes_the_best_token(beam):
    step, distribution = random_step(7)
    prefixes = [[5, 6, 7], [4], []]
    found = search(step, 3, 8, beam, Controls(prefixes=prefixes), n_best=beam)
    for prefix, hyps in zip(prefixes, found, strict=True):
        for hyp in hyps:
            if math.isfinite(hyp.score):
                assert hyp.tokens[:len(prefix)] == prefix
        if beam == 1:
            assert hyps[0].tokens == one_beam_by_hand(distribution, 8, prefix, [])


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("beam", [1, 4])
def test_no_ngram_repeats_with_the_option_on(size, beam):
    step, _ = random_step(3, eos_bias=-4.0, markov=True)  # long loops over 5 words: repeats without the rule
    plain = search(step, 4, 12, beam, Controls(), n_best=beam)
    found = search(step, 4, 12, beam, Controls(no_repeat_ngram_size=size), n_best=beam)

    def repeats(tokens: list[int]) -> bool:
        grams = [tuple(tokens[i:i + size]) for i in range(len(tokens) - size + 1)]
        return len(grams) != len(set(grams))

    assert any(repeats(h.tokens) for hyps in plain for h in hyps)
    for hyps in found:
        assert not any(repeats(h.tokens) for h in hyps if math.isfinite(h.score))


def test_the_repetition_penalty_multiplies_the_log_probability_of_tokens_already_generated():
    def step(prev, state, memory):  # always A 0.6, B 0.4 (then EOS very unlikely)
        log_probs = torch.full((prev.shape[0], V), float("-inf"))
        log_probs[:, 4], log_probs[:, 5], log_probs[:, EOS] = math.log(0.6), math.log(0.4), -20.0
        return log_probs, state, torch.ones(prev.shape[0], 1)

    plain = search(step, 1, 4, 1, Controls())[0][0]
    penalized = search(step, 1, 4, 1, Controls(repetition_penalty=2.0))[0][0]
    assert plain.tokens == [4, 4, 4, 4]
    # 2 log 0.6 = -1.02 < log 0.4 = -0.92: B once A is there; then both seen: 2 log 0.6 > 2 log 0.4
    assert penalized.tokens == [4, 5, 4, 4]


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("seed", range(3))
def test_streamed_tokens_are_never_taken_back_and_join_to_the_best_hypothesis(seed, beam):
    step, _ = random_step(seed)
    chunks: list[list[int]] = []
    found = search(step, 1, 10, beam, Controls(constraints=[[[6]]] if seed else None, listener=chunks.append))
    assert [tok for chunk in chunks for tok in chunk] == found[0][0].tokens
    if beam == 1:
        assert all(len(chunk) <= 1 for chunk in chunks)  # greedy: each token as it is chosen (none for EOS)


# With the trained toy model (the task reverses the words and upper-cases them) ----------------------------

@pytest.fixture(scope="module")
def translator(trained_run) -> Translator:
    return Translator.for_run(load_model(trained_run))


def test_translations_keep_prefix_and_constraints_and_warn_when_the_limit_leaves_no_room(translator, caplog):
    lines = ["ab ca de fo", "le mi no", "gu"]
    steers = [Steer(prefix="DE"), Steer(constraints=("AB CA", "JO")), Steer(prefix="GU", constraints=("KU",))]
    for beam in (1, 4):
        found = translator.translate(lines, beam_size=beam, steers=steers)
        assert found[0].text.startswith("DE")
        assert "AB CA" in found[1].text and "JO" in found[1].text
        assert found[2].text.startswith("GU") and "KU" in found[2].text
        assert all(t.missing == [] for t in found)
    too_long = ("AB CA DE FO GU", "HI JO KU LE MI", "NO PA AB CA DE")  # more than "ab" leaves room for
    with caplog.at_level(logging.WARNING):
        short = translator.translate(["ab"], beam_size=4, steers=[Steer(constraints=too_long)])[0]
    assert short.missing and "lacks" in caplog.text


def test_alternatives_differ_at_the_first_free_position_and_keep_the_prefix(translator):
    found = translator.translate(["ab ca de fo", "le mi"], beam_size=3, n_alternatives=3,
                                 steers=[Steer(prefix="FO"), Steer()])
    for translation, prefix in zip(found, (translator.encode_target("FO", "prefix"), []), strict=True):
        assert len(translation.hypotheses) == 3
        assert all(h.tokens[:len(prefix)] == prefix for h in translation.hypotheses)
        free = [h.tokens[len(prefix)] if len(h.tokens) > len(prefix) else EOS for h in translation.hypotheses]
        assert len(set(free)) == 3
    assert found[0].text == translator.translate(["ab ca de fo"], beam_size=3, steers=[Steer(prefix="FO")])[0].text


def test_an_ensemble_takes_the_same_controls(trained_run):
    from nmt.inference.ensemble import load_models

    ensemble = Translator.for_run(load_models([trained_run, trained_run], "best", ()))
    found = ensemble.translate(["le mi no"], beam_size=3, steers=[Steer(prefix="NO", constraints=("AB",))],
                               no_repeat_ngram_size=2)[0]
    assert found.text.startswith("NO") and "AB" in found.text.split()
    tokens = found.hypotheses[0].tokens
    assert len(set(zip(tokens, tokens[1:], strict=False))) == len(tokens) - 1


@pytest.mark.parametrize(("kwargs", "field", "message"), [
    ({"steers": [Steer(constraints=("",))]}, "constraint", "is empty"),
    ({"steers": [Steer(constraints=("ẞ",))]}, "constraint", "pieces the target vocabulary lacks"),
    ({"steers": [Steer(prefix="AB " * 40)]}, "prefix", "has at most"),
    ({"steers": [Steer(constraints=("AB " * 40,))]}, "constraint", "has at most"),
    ({"no_repeat_ngram_size": 0}, "no_repeat_ngram_size", "outside 1..10"),
    ({"no_repeat_ngram_size": 11}, "no_repeat_ngram_size", "outside 1..10"),
    ({"repetition_penalty": 0.5}, "repetition_penalty", "outside 1..10"),
    ({"repetition_penalty": math.inf}, "repetition_penalty", "outside 1..10"),
    ({"n_alternatives": 2, "steers": [Steer(constraints=("AB",))]}, "n_alternatives", "not with constraints"),
    ({"sampling": Sampling(seed=1), "steers": [Steer(constraints=("AB",))]}, "constraint", "not with sampling"),
])
def test_bad_steering_is_refused_naming_the_field(translator, kwargs, field, message):
    with pytest.raises(ArgumentError, match=message) as caught:
        translator.translate(["ab ca"], **kwargs)
    assert caught.value.field == field


def test_the_glossary_matches_whole_words_with_the_files_case(tmp_path):
    path = tmp_path / "terms.tsv"
    path.write_text("# terms\nBank\tbench\nsitzt auf\tsits on\n\nrot\tred\n", encoding="utf-8")
    glossary = Glossary.read(path)
    assert glossary.targets_for("Ein Mann sitzt auf einer Bank .") == ["bench", "sits on"]
    assert glossary.targets_for("Die Bankfiliale ist rot") == ["red"]  # "Bank" is not a whole word there
    assert glossary.targets_for("eine bank") == []  # the case the file gives
    steers = steer_lines(["Eine Bank", "rot"], ["A", ""], [["old"], []], glossary)
    assert steers == [Steer("A", ("old", "bench")), Steer("", ("red",))]
    path.write_text("Bank\tbench\nHund dog\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}, line 2: expected `source term<TAB>target term`"):
        Glossary.read(path)
    (tmp_path / "c.tsv").write_text("AB\tCA\n", encoding="utf-8")
    with pytest.raises(DataError, match="1 lines of constraints for 2 source lines"):
        line_constraints(["X"], tmp_path / "c.tsv", 2)
    assert line_constraints(["X"], tmp_path / "c.tsv", 1) == [["X", "AB", "CA"]]


def test_the_command_line_streams_what_it_translates_and_refuses_bad_steering(trained_run, tmp_path: Path):
    runner = CliRunner()
    inputs = tmp_path / "in.txt"
    inputs.write_text("ab ca de\n\nle mi\n", encoding="utf-8")
    glossary = tmp_path / "g.tsv"
    glossary.write_text("le\tHI\n", encoding="utf-8")
    common = ["translate", "--model", str(trained_run), "--input", str(inputs), "--glossary", str(glossary),
              "--beam-size", "3"]
    plain = runner.invoke(app, common)
    streamed = runner.invoke(app, [*common, "--stream"])
    assert plain.exit_code == streamed.exit_code == 0, plain.output + streamed.output
    assert streamed.stdout == plain.stdout and "HI" in plain.stdout.splitlines()[2]
    refused = runner.invoke(app, ["translate", "--model", str(trained_run), "ab", "--no-repeat-ngram-size", "0"])
    assert refused.exit_code == 2 and "error: --no-repeat-ngram-size: 0 is outside 1..10" in refused.output
    refused = runner.invoke(app, ["translate", "--model", str(trained_run), "ab", "--constraint", "ẞ"])
    assert refused.exit_code == 2 and "error: --constraint: 'ẞ' has pieces" in refused.output


def test_the_python_api_takes_prefixes_constraints_a_glossary_and_streams(trained_run):
    import nmt

    run = nmt.load(trained_run)
    found = run.translate(["ab ca de", "le mi"], beam_size=3, prefix=["DE", "MI"], constraints=[["FO"], []],
                          glossary={"le": "HI"})
    assert found[0].text.startswith("DE") and "FO" in found[0].text.split()
    assert found[1].text.startswith("MI") and "HI" in found[1].text.split()
    assert all(t.missing == [] for t in found)
    pieces = []
    [streamed] = run.translate("ab ca de fo", beam_size=3, constraints=["GU"], on_token=pieces.append)
    assert "".join(p.delta for p in pieces) == streamed.text and "GU" in streamed.text.split()
    with pytest.raises(ArgumentError, match="prefix: 3 for 2 texts"):
        run.translate(["ab", "ca"], prefix=["A", "B", "C"])
    with pytest.raises(ArgumentError, match="constraints: a list of phrases"):
        run.translate("ab", constraints="AB")
    with pytest.raises(ArgumentError, match="stream: streams one sentence at a time, not 2"):
        run.translate(["ab", "ca"], on_token=pieces.append)
