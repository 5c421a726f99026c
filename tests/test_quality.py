"""Quality scores: the calibration fit and its clipping, the uncalibrated fallback, the feature, the calibration
validation stores in every checkpoint, and the surfaces (nmt translate --scores / --min-quality, nmt evaluate's
Spearman, the API; the server: tests/test_server.py)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run as cli
from toy_runs import PROBES

import nmt
from nmt.config import EvaluationConfig
from nmt.inference.quality import (
    Calibration,
    QualityEstimator,
    calibration_scores,
    fit_calibration,
    mean_log_prob,
    sentence_chrf,
    spearman,
)
from nmt.inference.search import Hypothesis
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model
from nmt.runs.rundir import RunDir

SOURCES = PROBES + ["ab ab ab ab ab ab", "mi", "ku le mi no pa ca"]


def hypothesis(tokens: int, log_prob: float, ended: bool = True) -> Hypothesis:
    return Hypothesis(list(range(4, 4 + tokens)), log_prob, log_prob, torch.zeros(tokens + int(ended), 3))


def test_the_feature_is_the_mean_log_prob_per_token_eos_included():
    assert mean_log_prob(hypothesis(2, -3.0)) == pytest.approx(-1.0)  # two tokens and EOS
    assert mean_log_prob(hypothesis(2, -3.0, ended=False)) == pytest.approx(-1.5)  # stopped at the limit
    assert mean_log_prob(hypothesis(0, 0.0, ended=False)) == 0.0


def test_the_fit_recovers_a_known_line():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 0.0, 500)
    y = 20.0 * x + 90.0 + rng.normal(0.0, 0.5, 500)
    fitted = fit_calibration(x, y)
    assert fitted is not None
    assert fitted.slope == pytest.approx(20.0, abs=0.2) and fitted.intercept == pytest.approx(90.0, abs=0.3)
    assert fitted.spearman is not None and fitted.spearman > 0.99
    assert fit_calibration([1.0, 1.0, 1.0], [10.0, 20.0, 30.0]) is None  # no line through one point
    assert fit_calibration([1.0], [10.0]) is None


def test_the_estimate_is_clipped_to_chrfs_scale():
    line = Calibration(50.0, 120.0)
    assert line.estimate(-0.1) == pytest.approx(115.0 - 15.0)
    assert line.estimate(0.0) == 100.0 and line.estimate(-5.0) == 0.0


def test_the_calibration_goes_through_a_checkpoints_metadata():
    line = Calibration(12.5, 80.0, 0.4)
    assert Calibration.from_meta({"step": 1, **line.as_scores()}) == line
    assert Calibration.from_meta({"step": 1}) is None  # an old run or an imported model
    assert Calibration.from_meta({"quality_slope": "x", "quality_intercept": 1.0}) is None
    assert Calibration.from_meta({"quality_slope": math.nan, "quality_intercept": 1.0}) is None
    assert set(Calibration(1.0, 2.0).as_scores()) == {"quality_slope", "quality_intercept"}


def test_without_a_calibration_quality_is_the_geometric_mean_probability_said_once(caplog):
    estimator = QualityEstimator(None, "run/step-1")
    with caplog.at_level(logging.WARNING, logger="nmt.inference.quality"):
        first = estimator.estimate(hypothesis(3, -2.0))
        estimator.estimate(hypothesis(1, -0.1))
    assert first == pytest.approx(100.0 * math.exp(-0.5))
    assert not estimator.calibrated
    warnings = [r for r in caplog.records if "uncalibrated" in r.getMessage()]
    assert len(warnings) == 1 and "run/step-1" in warnings[0].getMessage()


def test_under_mbr_with_chrf_the_expected_utility_is_the_estimate():
    estimator = QualityEstimator(Calibration(10.0, 95.0), "run/step-1")
    best = hypothesis(3, -2.0)
    assert estimator.estimate(best, 71.5, "chrf") == 71.5
    assert estimator.estimate(best, 41.0, "bleu") == pytest.approx(90.0)  # BLEU utility: the calibrated line
    assert estimator.estimate(best, -30.0, "ter") == pytest.approx(90.0)


def test_calibration_scores_fit_sentence_chrf_on_the_feature():
    references = ["a b c d", "e f g h", "i j k l", "m n o p"]
    texts = ["a b c d", "e f g", "x j k y", "q r s t"]
    hyps = [hypothesis(4, -0.4), hypothesis(3, -1.6), hypothesis(4, -3.0), hypothesis(4, -6.0)]
    found = calibration_scores(hyps, texts, references, EvaluationConfig())
    chrf = sentence_chrf(texts, references, EvaluationConfig())
    slope, intercept = np.polyfit([mean_log_prob(h) for h in hyps], chrf, 1)
    assert found == pytest.approx({"quality_slope": slope, "quality_intercept": intercept, "quality_spearman": 1.0})
    assert spearman([1.0, 2.0], [3.0, 3.0]) is None


def test_every_checkpoint_of_the_toy_run_holds_its_calibration(trained_run):
    run = RunDir(trained_run)
    for files in run.checkpoints():
        meta = json.loads(files.meta.read_text())
        assert all(isinstance(meta[f"quality_{k}"], float) for k in ("slope", "intercept")), meta
        assert Calibration.from_meta(meta) is not None
    validations = [r for r in run.metrics() if "dev_bleu" in r]
    assert validations and all("quality_slope" in r and "quality_intercept" in r for r in validations)


def test_the_api_gives_each_translation_its_quality(trained_run):
    found = nmt.load(trained_run).translate(SOURCES + ["  "])
    assert all(0.0 <= t.quality <= 100.0 for t in found[:-1])
    assert found[-1].quality is None  # a line with no content


def test_scores_and_min_quality_columns_and_the_summary(trained_run):
    qualities = [t.quality for t in nmt.load(trained_run).translate(SOURCES)]
    plain = cli("translate", "--model", trained_run, stdin="".join(s + "\n" for s in SOURCES))
    assert plain.returncode == 0, plain.stderr
    texts = plain.stdout.splitlines()

    scored = cli("translate", "--model", trained_run, "--scores", stdin="".join(s + "\n" for s in SOURCES))
    assert scored.returncode == 0, scored.stderr
    rows = [line.split("\t") for line in scored.stdout.splitlines()]
    assert [r[1] for r in rows] == texts and [r[0] for r in rows] == [f"{q:.1f}" for q in qualities]

    threshold = float(np.median(qualities))
    flagged = cli("translate", "--model", trained_run, "--scores", "--min-quality", f"{threshold!r}",
                  stdin="".join(s + "\n" for s in SOURCES))
    rows = [line.split("\t") for line in flagged.stdout.splitlines()]
    low = sum(q < threshold for q in qualities)
    assert [r[1] for r in rows] == ["low" if q < threshold else "ok" for q in qualities]
    assert [r[2] for r in rows] == texts and [r[0] for r in rows] == [f"{q:.1f}" for q in qualities]
    assert flagged.stderr.strip().splitlines()[-1] == f"{low} of {len(SOURCES)} translations below quality " \
                                                      f"{threshold:g}"
    alone = cli("translate", "--model", trained_run, "--min-quality", "0", stdin="".join(s + "\n" for s in SOURCES))
    assert [line.split("\t") for line in alone.stdout.splitlines()] == [["ok", t] for t in texts]
    assert f"0 of {len(SOURCES)} translations below quality 0" in alone.stderr


@pytest.mark.parametrize("flags", [["--n-best", "2", "--beam-size", "2"], ["--stream"], ["--format", "html"]])
def test_quality_columns_go_with_one_translation_a_line(trained_run, flags):
    result = cli("translate", "--model", trained_run, "--scores", *flags, PROBES[0])
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--scores" in result.stderr


def test_evaluate_reports_the_spearman_of_quality_with_sentence_chrf(trained_run, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    result = cli("evaluate", "--model", run, "--split", "dev", "--beam-size", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "eval" / "dev.beam1.json").read_text())
    expected = nmt.load(run).evaluate(split="dev", beam_size=1).quality_spearman
    assert report["quality"] == {"spearman": pytest.approx(expected), "calibrated": True}
    shown = "undefined" if expected is None else f"{expected:+.3f}"
    assert f"quality: Spearman {shown} with sentence chrF" in result.stdout


def test_a_checkpoint_without_calibration_is_scored_uncalibrated(trained_run, tmp_path, rewrite_meta):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))

    def drop(text: str) -> str:
        return json.dumps({k: v for k, v in json.loads(text).items() if not k.startswith("quality_")})

    for files in RunDir(run).checkpoints():
        rewrite_meta(files, drop)
    result = cli("translate", "--model", run, "--scores", PROBES[0])
    assert result.returncode == 0, result.stderr
    [best] = Translator.for_run(load_model(run)).translate([PROBES[0]])[0].hypotheses
    assert result.stdout.split("\t")[0] == f"{100 * math.exp(best.log_prob / (len(best.tokens) + 1)):.1f}"
    assert sum("uncalibrated" in line for line in result.stderr.splitlines()) == 1
    evaluated = cli("evaluate", "--model", run, "--split", "dev")
    assert "(uncalibrated" in evaluated.stdout


def test_a_beams_mbr_scores_by_the_calibrated_estimate_and_sampled_chrf_by_its_expected_utility(trained_run):
    """A beam's n-best agree with each other whatever the reference, so their expected utility does not rank
    translations (BENCHMARKS.md): only over sampled candidates does it stand for the quality."""
    translator = Translator.for_run(load_model(trained_run))
    assert translator.estimator is not None and translator.estimator.calibration is not None
    beam = translator.translate(PROBES, mbr={"source": "beam", "candidates": 4, "metric": "chrf"})
    for t in beam:
        assert t.quality == pytest.approx(translator.estimator.calibration.estimate(mean_log_prob(t.hypotheses[0])))
    sampled = translator.translate(PROBES, mbr={"source": "sample", "candidates": 4, "metric": "chrf"}, seed=1)
    for t in sampled:
        assert t.utilities is not None and t.quality == pytest.approx(min(100.0, max(0.0, t.utilities[0])))
