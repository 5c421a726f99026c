"""How good the guide is: eflomal with grow-diag-final-and (what `nmt align --prepare` writes) scored on the
hand-aligned gold set, the gold pairs aligned together with a config's training pairs (eflomal needs a corpus
to learn from; the gold lines are the last ones).

    NMT_DATA_MIRROR=../shared/data python scripts/eflomal_gold.py --config configs/multi30k_deen_transformer.yaml

Prints precision, recall and AER (Och & Ney 2003). eflomal samples from its own random seed: runs differ
slightly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GOLD = Path(__file__).resolve().parent.parent / "tests" / "data" / "deen_gold"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--gold", type=Path, default=GOLD, help="PREFIX of PREFIX.de, PREFIX.en, PREFIX.align")
    args = parser.parse_args()

    from nmt.config import load_config
    from nmt.data.links import read_links
    from nmt.data.prepare import prepare_data
    from nmt.data.word_aligner import align_words
    from nmt.inspect.alignment import score_links

    train = prepare_data(load_config(args.config)).splits["train"]
    sources = args.gold.with_suffix(".de").read_text(encoding="utf-8").splitlines()
    targets = args.gold.with_suffix(".en").read_text(encoding="utf-8").splitlines()
    found = align_words(train.src_text + sources, train.tgt_text + targets)[-len(sources):]
    score = score_links(found, read_links(args.gold.with_suffix(".align")))
    print(json.dumps({"gold": str(args.gold), "training_pairs": len(train), "precision": round(score.precision, 3),
                      "recall": round(score.recall, 3), "aer": round(score.aer, 3)}))


if __name__ == "__main__":
    main()
