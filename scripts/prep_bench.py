"""Peak memory and time of `nmt data` on a synthetic corpus larger than the shipped ones (default 5 million
pairs): shows that data preparation streams instead of holding the corpus in memory.

    python scripts/prep_bench.py --pairs 5000000

Writes the corpus (about 20 words a side, a 5,000-word vocabulary, gzipped or not) to a temporary folder,
runs `nmt data` on it in a child process and prints one JSON line: pairs, seconds, the child's peak
resident memory, the cache's size on disk."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def pseudo_words(count: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(count)]


def write_corpus(folder: Path, pairs: int, seed: int, gz: bool) -> tuple[Path, Path]:
    """A source side of random words and a target side that maps each word and reverses the order."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    src_words = pseudo_words(5000, rng)
    translation = dict(zip(src_words, pseudo_words(5000, rng), strict=True))
    suffix = ".gz" if gz else ""
    paths = folder / f"train.src{suffix}", folder / f"train.tgt{suffix}"
    opener = gzip.open if gz else open
    with opener(paths[0], "wt", encoding="utf-8") as src, opener(paths[1], "wt", encoding="utf-8") as tgt:
        for _ in range(pairs):
            words = rng.choices(src_words, k=rng.randint(5, 35))
            src.write(" ".join(words) + "\n")
            tgt.write(" ".join(translation[w] for w in reversed(words)) + "\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5_000_000)
    parser.add_argument("--gzip", action="store_true", help="gzip the corpus files")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides passed to nmt data")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prep-bench-"))
    try:
        started = time.perf_counter()
        train_src, train_tgt = write_corpus(root / "corpus", args.pairs, seed=1, gz=args.gzip)
        dev_src, dev_tgt = write_corpus(root / "dev", 500, seed=2, gz=False)
        written = time.perf_counter() - started
        config = {
            "name": "prep_bench", "run_dir": str(root / "run"), "seed": 1,
            "data": {"src_lang": "xx", "tgt_lang": "yy", "cache_dir": str(root / "cache"),
                     "download_dir": str(root / "downloads"),
                     "train": {"format": "text", "src": str(train_src), "tgt": str(train_tgt)},
                     "dev": {"format": "text", "src": str(dev_src), "tgt": str(dev_tgt)}},
            "tokenizer": {"vocab_size": 8000, "model_type": "bpe"},
            "training": {"max_steps": 1},
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        nmt = [sys.executable, "-m", "nmt", "data", "--config", str(root / "config.yaml")]
        for override in args.set:
            nmt += ["--set", override]
        started = time.perf_counter()
        done = subprocess.run(nmt, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"nmt data failed:\n{done.stderr}")
        cache_bytes = sum(p.stat().st_size for p in (root / "cache").rglob("*") if p.is_file())
        print(json.dumps({
            "pairs": args.pairs, "gzip": args.gzip, "corpus_mb": round(sum(
                p.stat().st_size for p in (root / "corpus").iterdir()) / 2**20, 1),
            "write_corpus_s": round(written, 1), "nmt_data_s": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "cache_mb": round(cache_bytes / 2**20, 1), "overrides": args.set,
            "summary": done.stdout.strip().splitlines()[-3:]}))
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
