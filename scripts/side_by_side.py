"""nmt and JoeyNMT 2.3.0 side by side on the same data, model size and CPU, run alternately in one invocation:
training throughput (target tokens/s) and peak memory, decoding speed (greedy and beam 5, dev set) and,
with --budget-minutes, dev BLEU after that much training. Prints our/peer ratios.

    python scripts/side_by_side.py --data ../shared/data/small_parallel_enja --model runs/enja_bahdanau \
        [--budget-minutes 20] [--json side_by_side.json]

JoeyNMT is installed from PyPI into its own virtual environment (--venv, default /tmp/joeynmt-venv) with
the CPU build of torch 2.13.0 and the two fixes it needs there (importlib-metadata, sentencepiece 0.2.0);
nothing of it enters this project. Its config is scripts/joeynmt_enja.yaml (word level, 64 sentences a
batch, constant learning rate). Our side uses configs/enja_bahdanau.yaml as is (subwords, token-budget
batches) and once more with 64-sentence batches, the peer's batching.
"""

from __future__ import annotations

import argparse
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
PEER_CONFIG = ROOT / "scripts" / "joeynmt_enja.yaml"
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


def peer_config(workdir: Path, data: Path, beam: int, load_model: str = "") -> Path:
    text = PEER_CONFIG.read_text()
    for key, value in {"@MODEL_DIR@": str(workdir / "model"), "@DATA_DIR@": str(data.resolve()),
                       "@BEAM@": str(beam), "@LOAD_MODEL@": load_model}.items():
        text = text.replace(key, value)
    path = workdir / f"joeynmt_beam{beam}.yaml"
    path.write_text(text)
    return path


def peer_train(python: Path, workdir: Path, data: Path, seconds: float) -> dict:
    config = peer_config(workdir, data, beam=1)
    output, rss, _ = run_measured([str(python), "-m", "joeynmt", "train", str(config), "--skip-test"], seconds)
    (workdir / f"train_{int(seconds)}s.log").write_text(output)
    rates = [float(x) for x in re.findall(r"Tokens per Sec:\s*([\d.]+)", output)]
    validations = workdir / "model" / "validations.txt"
    bleus = [float(x) for x in re.findall(r"bleu:\s*([\d.]+)", validations.read_text())] if validations.exists() else []
    if not rates:
        raise SystemExit(f"JoeyNMT training printed no throughput; see {workdir}")
    steady = rates[1:] or rates
    return {"tokens_per_s": sum(steady) / len(steady), "peak_rss_mb": rss, "best_dev_bleu": max(bleus, default=None)}


def peer_decode(python: Path, workdir: Path, data: Path, beam: int, sentences: int) -> dict:
    checkpoints = sorted((workdir / "model").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise SystemExit(f"JoeyNMT left no checkpoint in {workdir / 'model'}")
    config = peer_config(workdir, data, beam, load_model=str(checkpoints[-1]))
    output, rss, wall = run_measured([str(python), "-m", "joeynmt", "test", str(config),
                                      "-o", str(workdir / f"hyp_beam{beam}")])
    (workdir / f"test_beam{beam}.log").write_text(output)
    took = re.findall(r"Generation took\s*([\d.]+)", output)
    seconds = float(took[-1]) if took else wall
    return {f"decode_beam{beam}_sent_per_s": sentences / seconds, f"decode_beam{beam}_peak_rss_mb": rss}


def ours(args, *extra: str) -> dict:
    command = [sys.executable, str(BENCH), "--phase", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.en/ja and dev.en/ja")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "enja_bahdanau.yaml")
    parser.add_argument("--model", type=Path, required=True, help="our trained run directory (for decoding)")
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "joeynmt-venv")
    parser.add_argument("--train-seconds", type=float, default=150.0)
    parser.add_argument("--budget-minutes", type=float)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    workdir = Path(tempfile.mkdtemp(prefix="joeynmt-side-by-side-"))
    dev_sentences = sum(1 for _ in open(args.data / "dev.en", encoding="utf-8"))
    base = ["--config", str(args.config), "--warmup", "5", "--steps", "60"]
    batch64 = [*base, "--set", "training.max_batch_sentences=64", "--set", "training.batch_tokens=100000"]

    rows: dict[str, dict] = {}
    # Alternate: ours, peer, ours (64-sentence batches) for training; then decoding.
    rows["ours"] = ours(args, "train", *base)
    peer = peer_train(python, workdir, args.data, args.train_seconds)
    rows["ours_batch64"] = ours(args, "train", *batch64)
    rows["ours"].update(ours(args, "decode", *base, "--model", str(args.model)))
    for beam in (1, 5):
        peer.update(peer_decode(python, workdir, args.data, beam, dev_sentences))
    peer["decode_peak_rss_mb"] = max(peer.pop("decode_beam1_peak_rss_mb"), peer.pop("decode_beam5_peak_rss_mb"))
    if args.budget_minutes:
        rows["ours"].update(ours(args, "budget", *base, "--budget-minutes", str(args.budget_minutes)))
        budget_dir = workdir / "budget"
        budget_dir.mkdir()
        budget = peer_train(python, budget_dir, args.data, args.budget_minutes * 60)
        peer["budget_best_dev_bleu"], peer["budget_peak_rss_mb"] = budget["best_dev_bleu"], budget["peak_rss_mb"]

    mine = rows["ours"]
    table = [
        ("training target tokens/s", mine["train_tokens_per_s"], peer["tokens_per_s"]),
        ("training tokens/s, 64-sentence batches", rows["ours_batch64"]["train_tokens_per_s"], peer["tokens_per_s"]),
        ("training peak RSS MB", mine["train_peak_rss_mb"], peer["peak_rss_mb"]),
        ("greedy decoding sentences/s", mine["decode_beam1_sent_per_s"], peer["decode_beam1_sent_per_s"]),
        ("beam-5 decoding sentences/s", mine["decode_beam5_sent_per_s"], peer["decode_beam5_sent_per_s"]),
        ("decoding peak RSS MB", mine["decode_peak_rss_mb"], peer["decode_peak_rss_mb"]),
    ]
    if args.budget_minutes:
        table += [(f"dev BLEU after {args.budget_minutes:g} min", mine["budget_best_dev_bleu"],
                   peer["budget_best_dev_bleu"]),
                  (f"peak RSS MB over the {args.budget_minutes:g} min", mine["budget_peak_rss_mb"],
                   peer["budget_peak_rss_mb"])]
    print(f"{'metric':42}  {'nmt':>10}  {'JoeyNMT':>10}  {'nmt/peer':>8}")
    for name, a, b in table:
        ratio = a / b if b else float("nan")
        print(f"{name:42}  {a:10,.1f}  {b:10,.1f}  {ratio:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"ours": rows, "peer": peer, "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
