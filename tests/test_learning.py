"""Learning is shown, not assumed: each attention type must learn to reverse sequences (>= 95% exact match
on held-out sequences, greedy decoding) within 1,500 steps; scripts/learning_spread.py measures how many steps
it takes over seeds and CPU kernel paths (the budget is far above the worst)."""

import pytest
import torch

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.batching import collate
from nmt.inference.search import greedy_search
from nmt.models import build_model
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.training.step import token_loss

SYMBOLS = 10  # ids 4 .. 13


def sequences(count: int, generator: torch.Generator) -> list[list[int]]:
    lengths = torch.randint(3, 8, (count,), generator=generator).tolist()
    return [torch.randint(4, 4 + SYMBOLS, (n,), generator=generator).tolist() for n in lengths]


def batch_of(seqs: list[list[int]]):
    import numpy as np

    return collate([s + [EOS_ID] for s in seqs], [list(reversed(s)) for s in seqs], np.arange(len(seqs)))


def exact_match(model, seqs) -> float:
    model.eval()
    batch = batch_of(seqs)
    with torch.no_grad():
        memory, state = model.encode(batch.src, batch.src_lengths, batch.src_mask)
        hyps = greedy_search(model.step_log_probs, memory, state, batch.src_lengths + 2, BOS_ID, EOS_ID, PAD_ID)
    model.train()
    return sum(h.tokens == list(reversed(s)) for h, s in zip(hyps, seqs, strict=True)) / len(seqs)


INPUT_FEEDING = {"bahdanau": None, "dot": True, "general": False, "concat": True, "multihead": True}
MAX_STEPS = 1500


def learn_to_reverse(attention: str, seed: int = 0, max_steps: int = MAX_STEPS) -> tuple[int, float, float]:
    """Train until >= 95% exact match on held-out sequences (checked every 100 steps) or `max_steps`;
    returns (steps taken, exact match, last loss / first loss). scripts/learning_spread.py calls it too."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(embed_dim=32, encoder=EncoderConfig(hidden_size=32, dropout=0.0),
                      decoder=DecoderConfig(hidden_size=64, dropout=0.0, input_feeding=INPUT_FEEDING[attention]),
                      attention=AttentionConfig(type=attention))
    model = build_model(cfg, 4 + SYMBOLS, 4 + SYMBOLS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    held_out = sequences(300, torch.Generator().manual_seed(99))
    accuracy, first_loss, loss = 0.0, None, None
    for step in range(1, max_steps + 1):
        batch = batch_of(sequences(64, generator))
        logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        loss = token_loss(logits, batch.tgt_out, 0.0) / batch.n_tgt_tokens
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        first_loss = first_loss or float(loss.detach())
        if step % 100 == 0:
            accuracy = exact_match(model, held_out)
            if accuracy >= 0.95:
                break
    return step, accuracy, float(loss.detach()) / first_loss


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("attention", list(INPUT_FEEDING))
def test_each_attention_type_learns_to_reverse(attention):
    steps, accuracy, loss_ratio = learn_to_reverse(attention)
    assert loss_ratio < 1 / 4
    assert accuracy >= 0.95, f"{attention}: {accuracy:.1%} exact match after {steps} steps"
