"""Word alignments of a training corpus, for guided alignment (`nmt align --prepare`): eflomal (Östling &
Tiedemann 2016) aligns the cleaned training pairs in both directions and NLTK's grow-diag-final-and (Koehn et
al. 2005) joins the two directions, the recipe Marian's and OpenNMT-py's guided alignment document with
fast_align and atools. Lines follow the prepared training split, so training reads link n for pair n."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.config import Config
from nmt.data.links import Link, format_links, read_links
from nmt.data.prepare import prepare_data
from nmt.errors import ConfigError, DataError
from nmt.fileio import atomic_write_text

log = logging.getLogger(__name__)


def _aligner_modules():
    try:
        import eflomal
        from nltk.translate.gdfa import grow_diag_final_and
    except ImportError:
        raise ConfigError("word alignment needs eflomal and nltk: pip install 'nmt[align]'") from None
    return eflomal, grow_diag_final_and


def align_words(sources: Sequence[str], targets: Sequence[str]) -> list[set[Link]]:
    """Symmetrized word links (source word, target word) of each pair of whitespace-tokenized sentences."""
    if len(sources) != len(targets):
        raise DataError(f"{len(sources)} source sentences but {len(targets)} target sentences")
    eflomal, grow_diag_final_and = _aligner_modules()
    with tempfile.TemporaryDirectory(prefix="nmt-align-") as folder:
        forward, reverse = Path(folder) / "forward", Path(folder) / "reverse"
        eflomal.Aligner().align(sources, targets, links_filename_fwd=str(forward), links_filename_rev=str(reverse))
        forward_lines = forward.read_text(encoding="utf-8").splitlines()
        reverse_lines = reverse.read_text(encoding="utf-8").splitlines()
    return [set(grow_diag_final_and(len(src.split()), len(tgt.split()), fwd, rev))
            for src, tgt, fwd, rev in zip(sources, targets, forward_lines, reverse_lines, strict=True)]


@dataclass
class PreparedAlignment:
    path: Path
    pairs: int
    links: int
    seconds: float


def prepare_alignment(config: Config, output: Path | None = None) -> PreparedAlignment:
    """Align the config's prepared training pairs (the cleaned text `nmt data` caches) and write them, one
    Pharaoh line per pair, to `output` or training.guided_alignment.path (whole or not at all)."""
    guided = config.training.guided_alignment
    if output is None:
        if guided is None:
            raise ConfigError("nmt align --prepare writes training.guided_alignment.path: set it in the config, "
                              "or give --output")
        output = Path(guided.path)
    started = time.monotonic()
    train = prepare_data(config).splits["train"]
    sources, targets = train.src_text, train.tgt_text
    log.info("aligning %d training pairs with eflomal", len(sources))
    found = align_words(sources, targets)
    atomic_write_text(output, "".join(format_links(links) + "\n" for links in found))
    return PreparedAlignment(output, len(found), sum(len(links) for links in found), time.monotonic() - started)


def read_training_links(path: Path, pairs: int) -> list[frozenset[Link]]:
    """The guided alignment file, one line per prepared training pair (else it was made for other data)."""
    if not path.is_file():
        raise ConfigError(f"training.guided_alignment.path {path}: no such file (write it with: nmt align "
                          "--prepare --config CONFIG)")
    lines = read_links(path)
    if len(lines) != pairs:
        raise ConfigError(f"training.guided_alignment.path {path}: {len(lines)} lines for {pairs} training pairs "
                          "(made for other data or cleaning? write it again with: nmt align --prepare --config "
                          "CONFIG)")
    return [links.possible for links in lines]
