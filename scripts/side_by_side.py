"""nmt and JoeyNMT 2.3.0 side by side on the same data, model size and CPU, run alternately in one invocation.

    # The RNN pair: small_parallel_enja en->ja, Bahdanau bi-GRU (training and decoding speed, peak memory,
    # optionally dev BLEU after --budget-minutes).
    python scripts/side_by_side.py --data ../shared/data/small_parallel_enja --model runs/enja_bahdanau \
        [--budget-minutes 20] [--json side_by_side.json]

    # The Transformer pair: Multi30k de->en, 3+3 layers, d 256, 4 heads, each trained from scratch for the
    # same budget, then test2016 decoded with beam 5 by each and scored by the same sacrebleu call.
    python scripts/side_by_side.py --pair transformer --data ../shared/data/multi30k [--budget-minutes 20]

JoeyNMT is installed from PyPI into its own virtual environment (--venv, default /tmp/joeynmt-venv) with
the CPU build of torch 2.13.0 and the two fixes it needs there (importlib-metadata, sentencepiece 0.2.0);
nothing of it enters this project. Its configs are scripts/joeynmt_enja.yaml (word level, 64 sentences a
batch, constant learning rate) and scripts/joeynmt_m30k_transformer.yaml (the peer recipe's config, joint
8k unigram SentencePiece trained here on the same training text). Our side uses the shipped configs as
they are (configs/enja_bahdanau.yaml, configs/multi30k_deen_transformer.yaml).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
PEER_CONFIGS = {"rnn": ROOT / "scripts" / "joeynmt_enja.yaml",
                "transformer": ROOT / "scripts" / "joeynmt_m30k_transformer.yaml"}
OUR_CONFIGS = {"rnn": ROOT / "configs" / "enja_bahdanau.yaml",
               "transformer": ROOT / "configs" / "multi30k_deen_transformer.yaml"}
PEER_DEV = {"rnn": "dev", "transformer": "val"}
PEER_BEAM_ALPHA = 0.6  # the GNMT length penalty of configs/multi30k_deen_transformer.yaml (the RNN pair has none)
PEER_PACKAGES = [["torch==2.13.0"], ["joeynmt==2.3.0"], ["importlib-metadata", "sentencepiece==0.2.0"]]


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in PEER_PACKAGES:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return python


def run_measured(command: list[str], seconds: float | None = None, cwd: Path = ROOT, env=None) -> tuple[str, float,
                                                                                                       float]:
    """Run a command (stopped with SIGINT after `seconds`); return its output, peak RSS (MB) and wall time."""
    start = time.perf_counter()
    # A shell's background job starts with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: restore the default so that the SIGINT below stops the peer the way Ctrl-C would.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if seconds is not None:
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
    output = process.stdout.read()
    _, _, usage = os.wait4(process.pid, 0)
    return output, usage.ru_maxrss / 1024, time.perf_counter() - start


def peer_config(pair: str, workdir: Path, data: Path, beam: int, load_model: str = "", dev: str = "") -> Path:
    """The pair's peer config with its @...@ values filled in; `dev` names another dev split."""
    text = PEER_CONFIGS[pair].read_text()
    for key, value in {"@MODEL_DIR@": str(workdir / "model"), "@DATA_DIR@": str(data.resolve()),
                       "@DEV@": dev or PEER_DEV[pair],
                       "@BEAM@": str(beam), "@ALPHA@": str(PEER_BEAM_ALPHA if beam > 1 else -1),
                       "@LOAD_MODEL@": load_model}.items():
        text = text.replace(key, value)
    path = workdir / f"joeynmt_beam{beam}.yaml"
    path.write_text(text)
    return path


def peer_train(pair: str, python: Path, workdir: Path, data: Path, seconds: float) -> dict:
    config = peer_config(pair, workdir, data, beam=1)
    output, rss, _ = run_measured([str(python), "-m", "joeynmt", "train", str(config), "--skip-test"], seconds)
    (workdir / f"train_{int(seconds)}s.log").write_text(output)
    rates = [float(x) for x in re.findall(r"Tokens per Sec:\s*([\d.]+)", output)]
    validations = workdir / "model" / "validations.txt"
    bleus = [float(x) for x in re.findall(r"bleu:\s*([\d.]+)", validations.read_text())] if validations.exists() else []
    if not rates:
        raise SystemExit(f"JoeyNMT training printed no throughput; see {workdir}")
    steady = sorted(rates[1:] or rates)  # the median: one slow window (another process) moves it little
    logged = re.findall(r"Step:\s*(\d+)", output) + re.findall(r"Interrupt at epoch \d+, step (\d+)", output)
    steps = [int(x) for x in logged]
    return {"tokens_per_s": steady[len(steady) // 2], "peak_rss_mb": rss, "best_dev_bleu": max(bleus, default=None),
            "steps": max(steps, default=0)}


def peer_decode(pair: str, python: Path, workdir: Path, data: Path, beam: int, sentences: int,
                dev: str = "") -> dict:
    """Decode with the peer's last checkpoint; its own "Generation took" time of the last set decoded."""
    checkpoints = sorted((workdir / "model").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise SystemExit(f"JoeyNMT left no checkpoint in {workdir / 'model'}")
    config = peer_config(pair, workdir, data, beam, load_model=str(checkpoints[-1]), dev=dev)
    output, rss, wall = run_measured([str(python), "-m", "joeynmt", "test", str(config),
                                      "-o", str(workdir / f"hyp_beam{beam}")])
    (workdir / f"test_beam{beam}.log").write_text(output)
    took = re.findall(r"Generation took\s*([\d.]+)", output)
    seconds = float(took[-1]) if took else wall
    return {f"decode_beam{beam}_sent_per_s": sentences / seconds, f"decode_beam{beam}_peak_rss_mb": rss}


def ours(*argv: str) -> dict:
    command = [sys.executable, str(BENCH), "--phase", *argv]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_rnn(args, python: Path, workdir: Path) -> list[tuple[str, float, float]]:
    """Training and decoding speed of the English->Japanese RNN, optionally dev BLEU after a budget."""
    dev_sentences = sum(1 for _ in open(args.data / "dev.en", encoding="utf-8"))
    base = ["--config", str(args.config), "--warmup", "5", "--steps", "60"]
    batch64 = [*base, "--set", "training.max_batch_sentences=64", "--set", "training.batch_tokens=100000"]
    # Alternate: ours, peer, ours (64-sentence batches) for training; then decoding.
    mine = ours("train", *base)
    peer = peer_train("rnn", python, workdir, args.data, args.train_seconds)
    mine_batch64 = ours("train", *batch64)
    mine.update(ours("decode", *base, "--model", str(args.model)))
    for beam in (1, 5):
        peer.update(peer_decode("rnn", python, workdir, args.data, beam, dev_sentences))
    peer["decode_peak_rss_mb"] = max(peer.pop("decode_beam1_peak_rss_mb"), peer.pop("decode_beam5_peak_rss_mb"))
    table = [
        ("training target tokens/s", mine["train_tokens_per_s"], peer["tokens_per_s"]),
        ("training tokens/s, 64-sentence batches", mine_batch64["train_tokens_per_s"], peer["tokens_per_s"]),
        ("training peak RSS MB", mine["train_peak_rss_mb"], peer["peak_rss_mb"]),
        ("greedy decoding sentences/s", mine["decode_beam1_sent_per_s"], peer["decode_beam1_sent_per_s"]),
        ("beam-5 decoding sentences/s", mine["decode_beam5_sent_per_s"], peer["decode_beam5_sent_per_s"]),
        ("decoding peak RSS MB", mine["decode_peak_rss_mb"], peer["decode_peak_rss_mb"]),
    ]
    if args.budget_minutes:
        mine.update(ours("budget", *base, "--budget-minutes", str(args.budget_minutes)))
        budget_dir = workdir / "budget"
        budget_dir.mkdir()
        budget = peer_train("rnn", python, budget_dir, args.data, args.budget_minutes * 60)
        table += [(f"dev BLEU after {args.budget_minutes:g} min", mine["budget_best_dev_bleu"],
                   budget["best_dev_bleu"]),
                  (f"peak RSS MB over the {args.budget_minutes:g} min", mine["budget_peak_rss_mb"],
                   budget["peak_rss_mb"])]
    return table


def peer_multi30k_data(data: Path, folder: Path) -> Path:
    """The peer recipe's data folder: the gzipped Multi30k files unpacked, and a joint 8k unigram
    SentencePiece model with its vocabulary file (pieces in id order; unk 0, pad 1, bos 2, eos 3)."""
    import sentencepiece as spm

    folder.mkdir()
    for name in ("train", "val", "test_2016_flickr"):
        for lang in ("de", "en"):
            with gzip.open(data / f"{name}.{lang}.gz", "rt", encoding="utf-8") as f:
                (folder / f"{name}.{lang}").write_text(f.read(), encoding="utf-8")
    for lang in ("de", "en"):  # a one-line dev set: `joeynmt test` decodes dev before test
        first = (folder / f"val.{lang}").read_text(encoding="utf-8").splitlines()[0]
        (folder / f"one.{lang}").write_text(first + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=[str(folder / "train.de"), str(folder / "train.en")],
                                   model_prefix=str(folder / "spm8k"), vocab_size=8000, model_type="unigram",
                                   unk_id=0, pad_id=1, bos_id=2, eos_id=3, character_coverage=1.0,
                                   minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(folder / "spm8k.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (folder / "spm8k.vocab.txt").write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    return folder


def test_bleu(hypotheses: Path, reference: Path) -> float:
    """Detokenized BLEU (sacrebleu's default 13a) of one hypotheses file, the same call for both sides."""
    import sacrebleu

    hyps = hypotheses.read_text(encoding="utf-8").splitlines()
    refs = reference.read_text(encoding="utf-8").splitlines()
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def compare_transformer(args, python: Path, workdir: Path) -> list[tuple[str, float, float]]:
    """Both Transformers trained from scratch for the same budget; test2016 decoded with beam 5 by each."""
    minutes = args.budget_minutes or 20.0
    data = peer_multi30k_data(args.data, workdir / "data")
    reference = data / "test_2016_flickr.en"
    test_sentences = len(reference.read_text(encoding="utf-8").splitlines())
    base = ["--config", str(args.config), "--split", "test"]
    mine = ours("budget", *base, "--budget-minutes", str(minutes))
    peer = peer_train("transformer", python, workdir, data, minutes * 60)
    run = mine["budget_run_dir"]
    mine.update(ours("decode", *base, "--model", run))
    evaluated = subprocess.run([sys.executable, "-m", "nmt", "evaluate", "--model", run, "--split", "test",
                                "--beam-size", "5"], capture_output=True, text=True, cwd=ROOT, check=True)
    hypotheses = Path(re.findall(r"hypotheses: (.+)", evaluated.stdout)[-1])
    mine["test_bleu_beam5"] = test_bleu(hypotheses, reference)
    peer.update(peer_decode("transformer", python, workdir, data, 5, test_sentences, dev="one"))
    peer["test_bleu_beam5"] = test_bleu(workdir / "hyp_beam5.test", reference)
    return [
        (f"training target tokens/s over {minutes:g} min", mine["budget_train_tokens_per_s"], peer["tokens_per_s"]),
        (f"training steps in {minutes:g} min", mine["budget_steps"], peer["steps"]),
        (f"peak RSS MB over the {minutes:g} min", mine["budget_peak_rss_mb"], peer["peak_rss_mb"]),
        ("beam-5 decoding sentences/s (test2016)", mine["decode_beam5_sent_per_s"], peer["decode_beam5_sent_per_s"]),
        ("decoding peak RSS MB", mine["decode_peak_rss_mb"], peer["decode_beam5_peak_rss_mb"]),
        (f"test2016 BLEU, beam 5, after {minutes:g} min", mine["test_bleu_beam5"], peer["test_bleu_beam5"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=sorted(OUR_CONFIGS), default="rnn")
    parser.add_argument("--data", type=Path, required=True,
                        help="small_parallel_enja (train/dev .en/.ja) or multi30k (gzipped) folder")
    parser.add_argument("--config", type=Path, help="our config (default: the pair's shipped config)")
    parser.add_argument("--model", type=Path, help="RNN pair: our trained run directory (for decoding)")
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "joeynmt-venv")
    parser.add_argument("--train-seconds", type=float, default=150.0, help="RNN pair: peer throughput window")
    parser.add_argument("--budget-minutes", type=float, help="training budget (Transformer pair: default 20)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.config = args.config or OUR_CONFIGS[args.pair]
    if args.pair == "rnn" and args.model is None:
        parser.error("--model is required for the RNN pair")
    python = ensure_venv(args.venv)
    workdir = Path(tempfile.mkdtemp(prefix="joeynmt-side-by-side-"))
    table = (compare_transformer if args.pair == "transformer" else compare_rnn)(args, python, workdir)
    print(f"{'metric':42}  {'nmt':>10}  {'JoeyNMT':>10}  {'nmt/peer':>8}")
    for name, a, b in table:
        ratio = a / b if b else float("nan")
        print(f"{name:42}  {a:10,.1f}  {b:10,.1f}  {ratio:8.2f}")
    if args.json:
        rows = [{"metric": name, "nmt": a, "joeynmt": b} for name, a, b in table]
        args.json.write_text(json.dumps({"pair": args.pair, "rows": rows, "peer_workdir": str(workdir),
                                         "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
