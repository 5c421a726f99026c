"""Word alignments: Pharaoh links, extraction from a word map, precision / recall / AER (Och & Ney 2003), and
alignments of the trained toy runs by forced decoding, scored per layer and head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from toy import reverse_words

from nmt.data.links import GoldLinks, check_links, format_links, parse_links, read_links
from nmt.errors import ConfigError, DataError
from nmt.inspect.aligner import align_files, choose_head, score_heads, select_map, word_maps
from nmt.inspect.alignment import extract_links, score_links
from nmt.runs.loading import load_model

DATA = Path(__file__).parent / "data"


def diagonal(n: int) -> set[tuple[int, int]]:
    return {(i, i) for i in range(n)}


def reversed_links(n: int) -> set[tuple[int, int]]:
    return {(i, n - 1 - i) for i in range(n)}


def test_links_parse_sure_and_possible():
    gold = parse_links("0-0 1?2  2-1", "x:1")
    assert gold.sure == {(0, 0), (2, 1)} and gold.possible == {(0, 0), (1, 2), (2, 1)}
    assert parse_links("", "x:1") == GoldLinks(frozenset(), frozenset())
    assert format_links({(2, 1), (0, 0), (1, 2)}) == "0-0 1-2 2-1"


@pytest.mark.parametrize("line", ["0-a", "1:2", "-1-2", "3", "1-2-3", "\u00b2-0", "0-\u0663", "0-0\u20281-1",
                                  "0-0\f1-1", "0-0\r1-1", "1" * 5000 + "-0"],
                         ids=["letter", "colon", "negative", "no-dash", "two-dashes", "superscript-two",
                              "arabic-indic-three", "line-separator", "form-feed", "lone-CR", "5000-digits"])
def test_a_bad_link_names_the_file_and_line(tmp_path, line):
    path = tmp_path / "gold.txt"
    path.write_text(f"0-0\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:2: .*no link"):
        read_links(path)



def test_pharaoh_lines_end_at_newline_alone_and_tolerate_crlf_and_a_bom(tmp_path):
    """U+2028 and form feeds are line breaks to str.splitlines, which counted 4 lines in this 2-line file."""
    path = tmp_path / "gold"
    path.write_bytes("\ufeff0-0 1?1\r\n\t2-2  3-3 \n".encode())
    assert read_links(path, 2) == [parse_links("0-0 1?1", "x"), parse_links("2-2 3-3", "x")]
    path.write_text("0-0\u20281-1\n0-0\f1-1\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:1: '0-0\\\\u20281-1' is no link"):
        read_links(path, 2)


@pytest.mark.slow  # real processes or big files: seconds
def test_a_gold_file_longer_than_its_pairs_is_refused_at_the_first_line_too_many(tmp_path):
    """10^6 lines for 3 pairs: the reading stops at line 4 (it used to build every line's links first: 928 MB)."""
    import tracemalloc

    path = tmp_path / "gold"
    path.write_bytes(b"0-0 1-1 2?2\n" * 1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"{path}: more than 3 lines of links for 3 sentence pairs"):
            read_links(path, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20), peak  # the file is 12 MB
    with pytest.raises(DataError, match=f"{path}: 1000000 lines of links for 2000000 sentence pairs"):
        read_links(path, 2_000_000)
    path.write_bytes(b"0-0 " * (1 << 19))
    with pytest.raises(DataError, match=f"{path}:1: a line over 1 MiB is no line of links"):
        read_links(path)
    path.write_bytes(b"0-0\n\xff-1\n")
    with pytest.raises(DataError, match=f"{path}:2: not UTF-8 text"):
        read_links(path)


def test_align_checks_a_gold_files_lines_against_the_sources_before_loading_a_model(tmp_path):
    (tmp_path / "src").write_text("ab ca\nde fo\n", encoding="utf-8")
    (tmp_path / "gold").write_bytes(b"0-0\n" * 1_000_000)
    with pytest.raises(DataError, match="gold: more than 2 lines of links for 2 sentence pairs"):
        align_files(tmp_path / "no-run", tmp_path / "src", tmp_path / "src", gold_file=tmp_path / "gold")
    (tmp_path / "gold").write_text("\u00b2-0\n0-0\n", encoding="utf-8")
    with pytest.raises(DataError, match="gold:1: '\u00b2-0' is no link"):
        align_files(tmp_path / "no-run", tmp_path / "src", tmp_path / "src", choose_on=tmp_path / "gold")

def test_a_link_outside_the_pair_is_refused():
    with pytest.raises(DataError, match="gold:3: link 4-0 is outside the pair's 3 source and 2 target words"):
        check_links(parse_links("0-0 4-0", "gold:3").possible, 3, 2, "gold:3")


def test_aer_of_a_perfect_alignment_is_0_and_of_the_reverse_is_1():
    gold = [GoldLinks(frozenset(diagonal(n)), frozenset(diagonal(n))) for n in (2, 4, 6)]
    perfect = score_links([diagonal(n) for n in (2, 4, 6)], gold)
    assert (perfect.precision, perfect.recall, perfect.aer) == (1.0, 1.0, 0.0)
    reverse = score_links([reversed_links(n) for n in (2, 4, 6)], gold)
    assert (reverse.precision, reverse.recall, reverse.aer) == (0.0, 0.0, 1.0)


def test_possible_links_count_for_precision_only():
    gold = [parse_links("0-0 1-1 1?2", "g:1")]
    score = score_links([{(0, 0), (1, 2)}], gold)  # one sure hit, one possible hit
    assert score.precision == 1.0 and score.recall == 0.5
    assert score.aer == pytest.approx(1 - (1 + 2) / (2 + 2))
    assert score_links([{(0, 0), (1, 1), (1, 2)}], gold).aer == 0.0  # all sure found, nothing wrong


def test_links_are_extracted_by_argmax_per_target_word_or_by_threshold():
    weights = np.array([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45], [0.0, 0.1, 0.9]])  # target words x source words
    assert extract_links(weights) == {(0, 0), (1, 1), (2, 2)}  # ties: the first source word
    assert extract_links(weights, threshold=0.4) == {(0, 0), (1, 1), (2, 1), (2, 2)}
    assert extract_links(np.zeros((0, 3))) == set()
    only_eos = np.array([[0.0, 1.0], [0.0, 0.0]])  # the second word looked only at the EOS left out
    assert extract_links(only_eos) == {(1, 0)} and extract_links(only_eos, threshold=0.0) == {(1, 0)}


@pytest.mark.parametrize("fixture", ["trained_run", "trained_transformer"])
def test_forced_decoding_aligns_the_given_translation_word_by_word(fixture, request):
    loaded = load_model(request.getfixturevalue(fixture), "best")
    sources = ["ab ca de fo", "gu hi"]
    targets = ["FO DE CA AB", "GU GU HI"]  # the second is no translation the model would give: forced
    pairs = word_maps(loaded, sources, targets)
    assert [p.target_words for p in pairs] == [t.split() for t in targets]
    assert [p.source_words for p in pairs] == [s.split() for s in sources]
    for pair in pairs:
        assert np.allclose(pair.maps.sum(-1), 1.0, atol=1e-5)
    own = word_maps(loaded, sources)
    assert [" ".join(p.target_words) for p in own] == [reverse_words(s) for s in sources]
    with pytest.raises(DataError, match="--src has 2 lines but --tgt 1"):
        word_maps(loaded, sources, targets[:1])
    with pytest.raises(ConfigError, match="layer: 9 is outside 1..[12]: the model has [12] layer"):
        select_map(pairs[0], layer=9)


def write_reversal_pairs(folder: Path) -> list[str]:
    """Five reversal pairs as `src`, `tgt` and their true links as `gold` in `folder`; returns the sources."""
    sources = ["ab ca de fo", "gu hi jo", "le mi no pa ku", "ca de", "hi jo ku le mi no"]
    (folder / "src").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (folder / "tgt").write_text("".join(reverse_words(s) + "\n" for s in sources), encoding="utf-8")
    (folder / "gold").write_text("".join(format_links(reversed_links(len(s.split()))) + "\n" for s in sources),
                                 encoding="utf-8")
    return sources


def test_the_heads_of_the_reversal_model_are_scored_and_the_best_one_aligns_the_mirror(trained_transformer, tmp_path):
    sources = write_reversal_pairs(tmp_path)
    found = align_files(trained_transformer, tmp_path / "src", tmp_path / "tgt", gold_file=tmp_path / "gold",
                        choose_on=tmp_path / "gold")
    assert len(found.table) == 2 * (4 + 1)  # 2 layers x (4 heads + their average)
    assert found.chosen is not None and (found.layer, found.head) == (found.chosen.layer, found.chosen.head)
    assert found.chosen == choose_head(found.table)
    assert found.score is not None and found.score.aer == min(row.score.aer for row in found.table if row.head)
    # the task is a permutation the model learned: some head must find it better than chance (AER ~0.8 here)
    assert found.score.aer < 0.5
    assert [len(links) for links in found.links] == [len(s.split()) for s in sources]  # argmax: one per word

    (tmp_path / "short").write_text("0-0\n", encoding="utf-8")
    with pytest.raises(DataError, match="1 lines of links for 5 sentence pairs"):
        align_files(trained_transformer, tmp_path / "src", tmp_path / "tgt", gold_file=tmp_path / "short")
    with pytest.raises(ConfigError, match="add --tgt"):
        align_files(trained_transformer, tmp_path / "src", gold_file=tmp_path / "gold")


def test_links_by_attribution_are_scored_beside_every_head(trained_run, tmp_path):
    """The RNN reversal model's output depends on the mirrored source word (its attribution peaks there: see
    test_attribution), so links by attribution find the mirror; every head gets its rank correlation with it."""
    write_reversal_pairs(tmp_path)
    found = align_files(trained_run, tmp_path / "src", tmp_path / "tgt", gold_file=tmp_path / "gold",
                        attribution="input_x_gradient")
    assert found.by_attribution == "input_x_gradient"
    assert found.score is not None and found.score.aer < 0.2
    assert all(row.spearman is not None and -1.0 <= row.spearman <= 1.0 for row in found.table)
    with pytest.raises(ConfigError, match="leave out --layer"):
        align_files(trained_run, tmp_path / "src", tmp_path / "tgt", head=1, attribution="input_x_gradient")


def test_the_shipped_gold_set_is_consistent():
    """Every link of tests/data/deen_gold.align falls inside its pair, and every English word is linked."""
    sources = (DATA / "deen_gold.de").read_text(encoding="utf-8").splitlines()
    targets = (DATA / "deen_gold.en").read_text(encoding="utf-8").splitlines()
    gold = read_links(DATA / "deen_gold.align")
    assert len(sources) == len(targets) == len(gold) >= 30
    for number, (src, tgt, links) in enumerate(zip(sources, targets, gold, strict=True), start=1):
        assert src == " ".join(src.split()) and tgt == " ".join(tgt.split())
        check_links(links.possible, len(src.split()), len(tgt.split()), f"deen_gold.align:{number}")
        assert links.sure, f"line {number} has no sure link"
        covered = {j for _, j in links.possible}
        assert covered == set(range(len(tgt.split()))), f"line {number}: English words without a link"


def test_a_head_chosen_on_gold_scores_no_worse_there_than_any_other(trained_run, tmp_path):
    sources = ["ab ca de", "fo gu hi jo"]
    (tmp_path / "src").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (tmp_path / "tgt").write_text("".join(reverse_words(s) + "\n" for s in sources), encoding="utf-8")
    (tmp_path / "gold").write_text("".join(format_links(reversed_links(len(s.split()))) + "\n" for s in sources),
                                   encoding="utf-8")
    pairs = word_maps(load_model(trained_run, "best"), sources, [reverse_words(s) for s in sources])
    table = score_heads(pairs, read_links(tmp_path / "gold"))
    assert [(row.layer, row.head) for row in table] == [(1, 1), (1, None)]  # an RNN: one map
    found = align_files(trained_run, tmp_path / "src", tmp_path / "tgt", threshold=0.3, gold_file=tmp_path / "gold")
    assert found.score is not None and found.score.links == sum(len(links) for links in found.links)
