import os

from nmt.config import load_config
from nmt.data.prepare import prepare_data


def test_cache_is_reused_then_rebuilt_when_a_field_or_file_changes(toy_config_path):
    first = prepare_data(load_config(toy_config_path))
    assert not first.reused
    assert first.stats["splits"]["train"]["pairs"] == 1500
    train = first.splits["train"]
    assert len(train) == 1500 and train.src_ids(0)[-1] == 3  # sources end in EOS
    again = prepare_data(load_config(toy_config_path))
    assert again.reused and again.cache_dir == first.cache_dir
    assert again.splits["dev"].tgt_text == first.splits["dev"].tgt_text

    changed = prepare_data(load_config(toy_config_path, ["tokenizer.vocab_size=45"]))
    assert not changed.reused and changed.cache_dir != first.cache_dir
    # Where the downloads go is not a content field: same cache.
    moved = prepare_data(load_config(toy_config_path, ["data.download_dir=elsewhere"]))
    assert moved.reused

    config = load_config(toy_config_path)
    src_file = config.data.train.src
    with open(src_file, "a", encoding="utf-8") as handle:
        handle.write("")
    stat = os.stat(src_file)
    os.utime(src_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = prepare_data(config)
    assert not touched.reused and touched.cache_dir != first.cache_dir


def test_a_failed_build_leaves_no_cache(toy_config_path, tmp_path):
    config = load_config(toy_config_path)
    with open(config.data.train.tgt, "a", encoding="utf-8") as handle:
        handle.write("one extra line\n")
    import pytest

    from nmt.errors import DataError

    with pytest.raises(DataError, match="lines but"):
        prepare_data(config)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_streamed_cache_holds_the_cleaned_text_and_its_ids_across_chunks(toy_config_path, monkeypatch):
    """Encoding appends chunk by chunk: a chunk size that splits the corpus unevenly changes nothing."""
    import nmt.data.prepare
    from nmt.data.corpus import load_split

    monkeypatch.setattr(nmt.data.prepare, "ENCODE_CHUNK", 7)
    config = load_config(toy_config_path, ["data.clean.lowercase=true"])
    prepared = prepare_data(config)
    train = prepared.splits["train"]
    corpus = load_split(config.data, "train")
    assert train.src_text == corpus.src and train.tgt_text == corpus.tgt  # cleaned (lowercased) text
    assert train.tgt_text[0] == train.tgt_text[0].lower()
    tokenizer = prepared.tokenizer
    for i in (0, 6, 7, 8, 700, len(train) - 1):
        assert list(train.src_ids(i)) == tokenizer.encode_src([corpus.src[i]])[0]
        assert list(train.tgt_ids(i)) == tokenizer.encode_tgt([corpus.tgt[i]])[0]
    assert prepared.stats["splits"]["train"]["tgt_tokens"] == int(train.tgt_lengths.sum())


def test_a_dev_split_with_nothing_left_is_refused_before_training(toy_config_path, tmp_path):
    """Training would validate on nothing and crash at its first validation: `nmt data` refuses it."""
    import pytest

    from nmt.errors import DataError

    config = load_config(toy_config_path)
    for path in (config.data.dev.src, config.data.dev.tgt):
        open(path, "w").close()
    with pytest.raises(DataError, match=r"data\.dev: no sentence pair to validate on \(empty\)"):
        prepare_data(config)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []
