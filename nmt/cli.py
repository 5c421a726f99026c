"""The `nmt` command line. Commands only parse options, call the library and print; errors from the
library are mapped to a one-line message and an exit code in `main`, the one place that does so."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import functools
from collections.abc import Callable

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


