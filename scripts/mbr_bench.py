"""Minimum Bayes risk against beam search on one trained run, and how well the quality score ranks translations.

    python scripts/mbr_bench.py runs/multi30k_deen_transformer --split test --sentences 500 --candidates 8 16 32

Decodes the first N sentences of a split (or --src/--ref files) with beam 5, greedily, and by MBR with each
utility (chrF, BLEU), each candidate source (a beam's n-best, epsilon sampling) and each number of candidates;
prints BLEU and chrF of each, the seconds per sentence (utilities included) and that time as a multiple of beam 5's,
and Spearman's correlation of the quality score with sentence chrF. `--json` prints the rows as JSON instead of
the table. The run's own decoding.mbr does not apply: every row says how it decodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nmt.data.splits import EvalSet, eval_set
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model

BASELINE = "beam 5"


def settings(candidates: list[int], metrics: list[str], sources: list[str]) -> list[tuple[str, dict]]:
    """(label, decode_and_score's keywords) of every row: beam 5 first (the baseline), greedy, then MBR."""
    rows = [(BASELINE, {"beam_size": 5, "mbr": False}), ("greedy", {"beam_size": 1, "mbr": False})]
    for metric in metrics:
        for source in sources:
            for count in candidates:
                rows.append((f"mbr {metric} {source} {count}",
                             {"mbr": {"metric": metric, "source": source, "candidates": count}}))
    return rows


def measure(translator: Translator, data: EvalSet, label: str, options: dict, seed: int) -> dict:
    config = translator.evaluation
    decoded = decode_and_score(translator, data, config, options.get("beam_size"), mbr=options["mbr"],
                               seed=seed if isinstance(options["mbr"], dict) and options["mbr"]["source"] == "sample"
                               else None)
    return {"decoding": label, "bleu": decoded.bleu.score, "chrf": decoded.chrf.score,
            "s_per_sentence": decoded.seconds / max(1, len(data.sources)),
            "quality_spearman": decoded.quality_spearman(data.references, config)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained run directory")
    parser.add_argument("--split", default="test", help="a split of the run's corpus (default test)")
    parser.add_argument("--src", type=Path, help="a source file instead of a split (with --ref)")
    parser.add_argument("--ref", type=Path, help="its references")
    parser.add_argument("--sentences", type=int, default=None, help="the first N sentences only")
    parser.add_argument("--candidates", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--metrics", nargs="+", default=["chrf", "bleu"], choices=["chrf", "bleu", "ter"])
    parser.add_argument("--sources", nargs="+", default=["beam", "sample"], choices=["beam", "sample"])
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--seed", type=int, default=1, help="of the sampled candidates")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    loaded = load_model(args.run, args.checkpoint)
    found = eval_set(loaded.config.data, None if args.src else args.split, args.src, args.ref)
    data = EvalSet(found.name, found.sources[:args.sentences], found.references[:args.sentences])
    translator = Translator.for_run(loaded)
    translator.translate(data.sources[:8], 5, mbr=False)  # warm-up: the first decode's one-off costs are no row's
    rows = []
    for label, options in settings(args.candidates, args.metrics, args.sources):
        rows.append(measure(translator, data, label, options, args.seed))
        print(f"{label}: BLEU {rows[-1]['bleu']:.2f}", file=sys.stderr, flush=True)
    base = rows[0]["s_per_sentence"]
    for row in rows:
        row["time_vs_beam5"] = row["s_per_sentence"] / base if base else None
    calibrated = translator.estimator is not None and translator.estimator.calibrated
    if args.json:
        print(json.dumps({"run": str(args.run), "checkpoint": loaded.checkpoint.path.name, "set": data.name,
                          "sentences": len(data.sources), "quality_calibrated": calibrated, "rows": rows}, indent=2))
        return 0
    print(f"{args.run} ({loaded.checkpoint.path.name}), {data.name}: {len(data.sources)} sentences; quality "
          f"{'calibrated on dev' if calibrated else 'uncalibrated'}")
    print(f"{'decoding':<22} {'BLEU':>6} {'chrF':>6} {'s/sent':>8} {'x beam 5':>8} {'quality rho':>11}")
    for row in rows:
        rho = "-" if row["quality_spearman"] is None else f"{row['quality_spearman']:+.3f}"
        print(f"{row['decoding']:<22} {row['bleu']:6.2f} {row['chrf']:6.2f} {row['s_per_sentence']:8.4f} "
              f"{row['time_vs_beam5']:8.2f} {rho:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
