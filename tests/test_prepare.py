import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from toy import toy_config_dict, write_config

from nmt.config import load_config
from nmt.data.prepare import MANIFEST, cache_folder, prepare_data
from nmt.errors import DataError

NMT = str(Path(sys.executable).with_name("nmt"))


def cache_entries(cache: Path) -> list[str]:
    """What a cache folder holds besides the lock files (one per key, kept: see prepare._lock_file)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


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
    with pytest.raises(DataError, match="lines but"):
        prepare_data(config)
    assert cache_entries(tmp_path / "cache") == []


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
    config = load_config(toy_config_path)
    for path in (config.data.dev.src, config.data.dev.tgt):
        open(path, "w").close()
    with pytest.raises(DataError, match=r"data\.dev: no sentence pair to validate on \(empty\)"):
        prepare_data(config)
    assert cache_entries(tmp_path / "cache") == []


def overwrite(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff" * 16)


def scramble(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def drop_from_manifest(path: Path) -> None:
    manifest = json.loads(path.read_text())
    del manifest["files"]["train.src_tokens.int32"]
    path.write_text(json.dumps(manifest))


DAMAGES = {  # file, what is done to it, what the warning says
    "truncated_tokens": ("train.src_tokens.int32", lambda p: os.truncate(p, 1000),
                         "train.src_tokens.int32 is truncated: 1000 bytes"),
    "overwritten_tokens": ("train.tgt_tokens.int32", overwrite, "train.tgt_tokens.int32 is corrupted"),
    "garbage_offsets": ("train.src_offsets.npy", scramble, "train.src_offsets.npy is corrupted"),
    "deleted_tokenizer": ("tgt.spm", Path.unlink, "tgt.spm is missing"),
    "garbage_manifest": (MANIFEST, scramble, "MANIFEST.json is unreadable"),
    "no_manifest": (MANIFEST, Path.unlink, "no MANIFEST.json"),
    "manifest_without_an_entry": (MANIFEST, drop_from_manifest, "train.src_tokens.int32 is not in MANIFEST.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_cache_is_rebuilt_with_one_warning_naming_the_file(toy_config_path, caplog, damage):
    config = load_config(toy_config_path)
    built = prepare_data(config)
    text = built.splits["train"].src_text
    name, harm, said = DAMAGES[damage]
    harm(built.cache_dir / name)
    rebuilt = prepare_data(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and said in warnings[0] and str(built.cache_dir) in warnings[0], warnings
    assert not rebuilt.reused and rebuilt.cache_dir == built.cache_dir
    assert rebuilt.splits["train"].src_text == text
    assert prepare_data(config).reused  # the rebuilt cache passes the check
    assert cache_entries(built.cache_dir.parent) == [built.cache_dir.name]  # the damaged one is not left aside


def test_a_damaged_cache_that_cannot_be_rebuilt_is_refused_in_one_line(tmp_path, tmpfs):
    raw = toy_config_dict(tmp_path)
    point = tmpfs("16m")
    raw["data"]["cache_dir"] = str(point / "cache")
    config = load_config(write_config(tmp_path, raw))
    folder = prepare_data(config).cache_dir
    os.truncate(folder / "train.src_tokens.int32", 1000)
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
    with pytest.raises(DataError) as caught:
        prepare_data(config)
    assert str(caught.value).startswith(f"cache {folder} is damaged (train.src_tokens.int32 is truncated")
    assert "cannot be rebuilt" in str(caught.value) and "Read-only file system" in str(caught.value)
    assert "\n" not in str(caught.value)


# A build that stops in the middle (before SentencePiece, its text files written) until the file `go` exists.
PAUSED_BUILD = """
import sys, time
from pathlib import Path
from nmt.config import load_config
from nmt.data import prepare

config, ready, go = sys.argv[1:4]
train = prepare.Tokenizer.train
def paused(*args, **kwargs):
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.05)
    return train(*args, **kwargs)
prepare.Tokenizer.train = paused
print("reused" if prepare.prepare_data(load_config(config)).reused else "built")
"""


def start_paused_build(config_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """A real `prepare_data` in another process, stopped mid-build; returns it and the file that resumes it."""
    ready, go = config_path.parent / f"{name}.ready", config_path.parent / f"{name}.go"
    process = subprocess.Popen([sys.executable, "-c", PAUSED_BUILD, str(config_path), str(ready), str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the build never reached SentencePiece"
        time.sleep(0.05)
    return process, go


def staging_folders(config) -> list[Path]:
    folder = cache_folder(config)
    return sorted(p for p in folder.parent.glob(f".{folder.name}.*") if p.is_dir())


def variant(tmp_path: Path, name: str, vocab_size: int) -> Path:
    """The toy config with another vocabulary size (another cache key), in a folder of its own."""
    root = tmp_path / name
    root.mkdir()
    raw = toy_config_dict(root)
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    raw["tokenizer"]["vocab_size"] = vocab_size
    return write_config(root, raw)


def test_staging_folders_of_killed_builds_are_removed_by_the_next_build(tmp_path):
    """A build SIGKILLed mid-build leaves its staging folder. The next build of another key removes it (no live
    process holds the folder's lock), and so does the next build of the same key."""
    paths = [variant(tmp_path, "a", 40), variant(tmp_path, "b", 42)]
    first, second = (load_config(path) for path in paths)
    process, _ = start_paused_build(paths[0], "a")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert len(staging_folders(first)) == 1
    process, _ = start_paused_build(paths[1], "b")
    assert staging_folders(first) == []  # removed by the build of another key
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert len(staging_folders(second)) == 1
    assert not prepare_data(second).reused
    assert staging_folders(second) == []  # removed by the next build of its own key
    assert cache_entries(tmp_path / "cache") == [cache_folder(second).name]


def test_a_live_build_keeps_its_staging_and_a_second_builder_waits_for_it(tmp_path, caplog):
    """While one process builds a key, a build of another key leaves its staging alone, and a second build
    of the same key waits for the first and reuses its cache: one build, nothing deleted under anyone."""
    path = variant(tmp_path, "a", 40)
    config = load_config(path)
    process, go = start_paused_build(path, "live")
    try:
        staging = staging_folders(config)
        assert len(staging) == 1
        assert not prepare_data(load_config(variant(tmp_path, "b", 42))).reused  # another key, built meanwhile
        assert staging_folders(config) == staging and (staging[0] / "train.src.txt").is_file()

        caplog.set_level(logging.INFO, logger="nmt.data.prepare")
        second: list = []
        waiter = threading.Thread(target=lambda: second.append(prepare_data(config)))
        waiter.start()
        deadline = time.monotonic() + 120
        while not any(f"waiting for nmt, pid {process.pid} " in r.getMessage() for r in caplog.records):
            assert waiter.is_alive() and time.monotonic() < deadline, "the second build did not wait"
            time.sleep(0.05)
        go.touch()
        out, err = process.communicate(timeout=300)
        waiter.join(timeout=300)
    finally:
        go.touch()
        process.kill()
    assert process.returncode == 0 and out.strip() == "built", err
    assert second and second[0].reused and second[0].cache_dir == cache_folder(config)
    assert staging_folders(config) == []


def nmt_data(tmp_path: Path, raw: dict) -> subprocess.CompletedProcess:
    """`nmt data` on a config, in a process of its own; never a traceback."""
    result = subprocess.run([NMT, "data", "--config", str(write_config(tmp_path, raw))], capture_output=True,
                            text=True, timeout=300)
    assert "Traceback" not in result.stderr
    return result


def cleaned_to_nothing(tmp_path: Path) -> dict:
    """The toy config with a training split whose 4 pairs cleaning drops: 1 empty, 2 too long, 1 unbalanced."""
    raw = toy_config_dict(tmp_path)
    src, tgt = tmp_path / "nothing.src", tmp_path / "nothing.tgt"
    src.write_text("\n" + "x" * 50 + "\n" + "x" * 50 + "\na\n")
    tgt.write_text("a\n" + "y" * 50 + "\ny\naaaaaaaaaa\n")
    raw["data"].update(clean={"max_chars": 40}, train={"format": "text", "src": str(src), "tgt": str(tgt)})
    return raw


CLEANED_TO_NOTHING = (
    "data.train: no sentence pair to train on (all 4 dropped by cleaning: 1 empty (a side without text), "
    "1 length_ratio (lengths further apart than data.clean.max_length_ratio=4), 2 too_long (a side over "
    "data.clean.max_chars=40 characters))")


def test_a_training_split_cleaned_to_nothing_says_why_with_the_counts_per_reason(tmp_path):
    config = load_config(write_config(tmp_path, cleaned_to_nothing(tmp_path)))
    with pytest.raises(DataError) as caught:
        prepare_data(config)
    assert str(caught.value) == CLEANED_TO_NOTHING
    assert cache_entries(tmp_path / "cache") == []


def test_nmt_data_on_a_training_split_cleaned_to_nothing(tmp_path):
    result = nmt_data(tmp_path, cleaned_to_nothing(tmp_path))
    assert result.returncode == 2 and result.stderr == f"error: {CLEANED_TO_NOTHING}\n"


def test_a_source_side_with_cr_line_endings_is_read_line_by_line(tmp_path, caplog):
    """Classic Mac OS line ends on one side, LF on the other: still 1500 aligned pairs, with a warning."""
    from toy import reversal_pairs

    raw = toy_config_dict(tmp_path)
    sources = [s for s, _ in reversal_pairs(1500, 1)]  # what toy_config_dict wrote, one per LF line
    mac = tmp_path / "mac.src"
    mac.write_bytes("".join(s + "\r" for s in sources).encode())
    raw["data"]["train"]["src"] = str(mac)
    prepared = prepare_data(load_config(write_config(tmp_path, raw)))
    assert prepared.stats["splits"]["train"]["pairs"] == 1500
    assert prepared.splits["train"].src_text == sources
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{mac} uses CR line endings (classic Mac OS): each CR is read as a line break"]


def test_nmt_data_on_a_corpus_with_cr_line_endings(tmp_path):
    from toy import reversal_pairs

    raw = toy_config_dict(tmp_path)
    mac = tmp_path / "mac.src"
    mac.write_bytes("".join(s + "\r" for s, _ in reversal_pairs(1500, 1)).encode())
    raw["data"]["train"]["src"] = str(mac)
    result = nmt_data(tmp_path, raw)
    assert result.returncode == 0 and f"{mac} uses CR line endings" in result.stderr
    assert any(line.split()[:2] == ["train", "1500"] for line in result.stdout.splitlines())


def test_nmt_data_on_a_tsv_line_with_a_tab_too_many(tmp_path):
    raw = toy_config_dict(tmp_path)
    tsv = tmp_path / "quoted.tsv"
    tsv.write_text('hello\thallo\n"he said ""hi"""\ter sagte "hi"\n"a\tb"\tc\n')
    raw["data"]["train"] = {"format": "tsv", "path": str(tsv)}
    result = nmt_data(tmp_path, raw)
    assert result.returncode == 2
    assert result.stderr == (f"error: {tsv} line 3: 3 tab-separated fields, but line 1 has 2: a tab inside a field "
                             "would shift the columns (fields are not quoted)\n")


def test_nmt_data_rebuilds_a_cache_with_garbage_offsets(tmp_path):
    """The case that was a ValueError traceback: exit 0, one warning line naming the file, a new cache."""
    raw = toy_config_dict(tmp_path)
    folder = prepare_data(load_config(write_config(tmp_path, raw))).cache_dir
    scramble(folder / "train.src_offsets.npy")
    result = nmt_data(tmp_path, raw)
    assert result.returncode == 0 and f"built cache {folder}" in result.stdout
    assert [line for line in result.stderr.splitlines() if "rebuilding" in line] == [
        f"cache {folder}: train.src_offsets.npy is corrupted (its sha256 does not match MANIFEST.json); rebuilding it"]
