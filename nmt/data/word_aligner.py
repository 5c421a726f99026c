"""Word alignments of a training corpus, for guided alignment (`nmt align --prepare`): eflomal (Östling &
Tiedemann 2016) aligns the cleaned training pairs in both directions and grow-diag-final-and (Koehn et al.
2005) joins the two, the recipe Marian's and OpenNMT-py's guided alignment document with fast_align and
atools. atools is not on PyPI, and NLTK's `grow_diag_final_and` (3.10) returns the union of the two
directions (its neighbour test compares indices with dictionary keys), so the heuristic is written here.

Lines follow the prepared training split, so training reads line n for pair n. A pair whose whitespace
words the tokenizer does not start one piece each ("▁") gets an empty line: its links would point at the
wrong pieces. eflomal samples from a random seed of its own, so two runs of `--prepare` differ slightly."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.config import Config
from nmt.data.links import Link, format_links, read_links
from nmt.data.prepare import prepare_data
from nmt.data.tokenizer import WORD_START
from nmt.errors import ConfigError, DataError
from nmt.fileio import atomic_write_text
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)


NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Koehn et al.'s symmetrization: start from the links both directions agree on; add a neighbouring link
    (diagonals included) of the union while one of its two words is still unaligned, until none is added; then
    add a link of either direction whose two words are both unaligned."""
    links = forward & reverse
    union = forward | reverse
    sources, targets = {i for i, _ in links}, {j for _, j in links}
    grown = True
    while grown:
        grown = False
        for i, j in sorted(links):
            for di, dj in NEIGHBOURS:
                near = (i + di, j + dj)
                if near in union and near not in links and (near[0] not in sources or near[1] not in targets):
                    links.add(near)
                    sources.add(near[0])
                    targets.add(near[1])
                    grown = True
    for direction in (forward, reverse):
        for i, j in sorted(direction):
            if i not in sources and j not in targets:
                links.add((i, j))
                sources.add(i)
                targets.add(j)
    return links


def align_words(sources: Sequence[str], targets: Sequence[str]) -> list[set[Link]]:
    """Symmetrized word links (source word, target word) of each pair of whitespace-tokenized sentences."""
    if len(sources) != len(targets):
        raise DataError(f"{len(sources)} source sentences but {len(targets)} target sentences")
    try:
        import eflomal
    except ImportError:
        raise ConfigError("word alignment needs eflomal: pip install 'nmt[align]'") from None
    with tempfile.TemporaryDirectory(prefix="nmt-align-") as folder:
        forward, reverse = Path(folder) / "forward", Path(folder) / "reverse"
        eflomal.Aligner().align(sources, targets, links_filename_fwd=str(forward), links_filename_rev=str(reverse))
        forward_links = read_links(forward, len(sources))
        reverse_links = read_links(reverse, len(sources))
    return [grow_diag_final_and(set(fwd.sure), set(rev.sure))
            for fwd, rev in zip(forward_links, reverse_links, strict=True)]


def word_starts(pieces: list[str]) -> np.ndarray:
    """Per vocabulary id: 1 where the piece begins a word, 0 where it continues one, -1 for PAD, BOS and EOS,
    which belong to no word."""
    starts = np.array([piece.startswith(WORD_START) for piece in pieces], dtype=np.int64)
    starts[[PAD_ID, BOS_ID, EOS_ID]] = -1
    return starts


def piece_words(ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The word index of each piece (0-based), -1 for specials: ["▁Zwei", "▁Hund", "e", "</s>"] -> [0, 1, 1, -1]."""
    kind = starts[ids]
    words = np.cumsum(kind == 1) - 1
    return np.where(kind == -1, -1, words)


@dataclass
class PreparedAlignment:
    path: Path
    pairs: int
    links: int
    seconds: float
    unaligned: int  # pairs left empty: their words and the tokenizer's word starts disagree


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
    prepared = prepare_data(config)
    train, tokenizer = prepared.splits["train"], prepared.tokenizer
    sources, targets = train.src_text, train.tgt_text
    log.info("aligning %d training pairs with eflomal", len(sources))
    found = align_words(sources, targets)
    src_starts = word_starts(tokenizer.src_pieces(range(tokenizer.src_vocab_size)))
    tgt_starts = word_starts(tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size)))
    unaligned = 0
    for i, (source, target) in enumerate(zip(sources, targets, strict=True)):
        if (int((src_starts[train.src_ids(i)] == 1).sum()) != len(source.split())
                or int((tgt_starts[train.tgt_ids(i)] == 1).sum()) != len(target.split())):
            found[i], unaligned = set(), unaligned + 1
    atomic_write_text(output, "".join(format_links(links) + "\n" for links in found))
    return PreparedAlignment(output, len(found), sum(len(links) for links in found), time.monotonic() - started,
                             unaligned)


def read_training_links(path: Path, pairs: int) -> list[frozenset[Link]]:
    """The guided alignment file, one line per prepared training pair (else it was made for other data)."""
    if not path.is_file():
        raise ConfigError(f"training.guided_alignment.path {path}: no such file (write it with: nmt align "
                          "--prepare --config CONFIG)")
    try:
        lines = read_links(path, pairs, "training pairs (made for other data or cleaning? write it again with: nmt "
                           "align --prepare --config CONFIG)")
    except DataError as err:
        raise ConfigError(f"training.guided_alignment.path {err}") from None
    return [links.possible for links in lines]
