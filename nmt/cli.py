"""The `nmt` command line. Commands only parse options, call the library and print; errors from the
library are mapped to a one-line message and an exit code in `main`, the one place that does so."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from nmt.config import Config, load_config
from nmt.errors import NmtError

app = typer.Typer(
    help="Neural machine translation with attention: prepare data, train, translate, evaluate, inspect attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The run's YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set training.lr=0.002 (repeatable)."),
]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)


def command(fn: Callable) -> Callable:
    """Register a command whose library errors become one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NmtError as err:
            for line in str(err).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(err.exit_code) from None

    return app.command()(run)


def _config(path: Path, overrides: list[str] | None, check_files: bool = True) -> Config:
    return load_config(path, overrides or [], check_files=check_files)


@command
def data(config: ConfigOption, set_: SetOption = None) -> None:
    """Read or download the corpora, clean them, train SentencePiece, encode and cache; print statistics."""
    from nmt.report import data_report

    cfg = _config(config, set_)
    typer.echo(data_report(cfg))




@command
def train(
    config: ConfigOption,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest intact checkpoint.")] = False,
) -> None:
    """Train the model the config describes; checkpoints, dev scores and logs go to the run directory."""
    from nmt.train import train as run_training

    result = run_training(_config(config, set_), resume=resume)
    typer.echo(f"{result.run_dir}: {result.steps} steps ({result.stop_reason}), best dev BLEU {result.best_bleu:.2f}")


ModelOption = Annotated[Path | None, typer.Option("--model", "-m", help="Run directory of a trained model.")]
CheckpointOption = Annotated[str, typer.Option("--checkpoint", help="'best' (by dev BLEU) or 'last'.")]
BeamOption = Annotated[int | None, typer.Option("--beam-size", "-b", min=1,
                                                help="Beam size (1 = greedy); default: the config's decoding.")]


def _run_dir(model: Path | None, config: Path | None) -> Path:
    if model is not None:
        return model
    if config is not None:
        return load_config(config, check_files=False).run_path
    raise typer.BadParameter("give --model RUN_DIR or --config X.yaml")


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return value


@command
def translate(
    sentence: Annotated[str | None, typer.Argument(help="A sentence to translate (else --input or stdin).")] = None,
    model: ModelOption = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Find the run directory from a config.")] = None,
    input_: Annotated[Path | None, typer.Option("--input", "-i", help="File to translate, one sentence a line.")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write translations here, not stdout.")]
    = None,
    beam_size: BeamOption = None,
    n_best: Annotated[int, typer.Option("--n-best", min=1, help="Print the N best hypotheses with scores.")] = 1,
    checkpoint: CheckpointOption = "best",
) -> None:
    """Translate a sentence, a file or standard input: one output line per input line, order kept."""
    from nmt.checkpoint import load_model
    from nmt.corpus import read_lines, read_stream
    from nmt.fileio import atomic_write_text
    from nmt.translate import Translator

    _check_choice(checkpoint, ("best", "last"), "--checkpoint")
    if sentence is not None:
        lines = [sentence]
    elif input_ is not None:
        lines = list(read_lines(input_))
    elif sys.stdin.isatty():
        raise typer.BadParameter("give a sentence, --input FILE, or pipe text into standard input")
    else:
        lines = read_stream(sys.stdin.buffer, "<stdin>")
    cfg, tokenizer, net, _ = load_model(_run_dir(model, config), checkpoint)
    beam = beam_size or cfg.decoding.beam_size
    results = Translator(net, tokenizer, cfg.decoding).translate(lines, beam, n_best, progress=input_ is not None)
    if n_best == 1:
        text = "".join(r.text + "\n" for r in results)
    else:
        text = "".join(f"{i}\t{h.score:.4f}\t{t}\n" for i, r in enumerate(results)
                       for h, t in zip(r.hypotheses, r.texts, strict=True))
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)


@command
def evaluate(
    model: ModelOption = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Find the run directory from a config.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="dev or test (default dev).")] = None,
    src: Annotated[Path | None, typer.Option("--src", help="External source file (with --ref).")] = None,
    ref: Annotated[Path | None, typer.Option("--ref", help="External reference file (with --src).")] = None,
    beam_size: BeamOption = None,
    checkpoint: CheckpointOption = "best",
) -> None:
    """Translate a test set and score it with sacrebleu: BLEU, chrF and TER, with signatures."""
    from nmt.evaluate import evaluate as run_evaluation

    _check_choice(checkpoint, ("best", "last"), "--checkpoint")
    if split is not None:
        _check_choice(split, ("dev", "test"), "--split")
    report = run_evaluation(_run_dir(model, config), split, src, ref, checkpoint, beam_size,
                            progress=sys.stderr.isatty())
    typer.echo(f"{report.name}: {report.sentences} sentences")
    for score in report.scores:
        typer.echo(str(score))
    typer.echo(f"hypotheses: {report.hypotheses_path}\nreport: {report.report_path}")
