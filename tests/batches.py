"""Random padded batches shared by the model tests (any model with the `forward` / `encode` interface)."""

import torch

from nmt.tokens import BOS_ID, EOS_ID, PAD_ID


def random_batch(src_vocab: int, tgt_vocab: int, seed: int = 0):
    """Three sources of lengths 7, 5, 2 (EOS last, padded) and targets of 6 with BOS first:
    (src, lengths, src_mask, tgt_in)."""
    torch.manual_seed(seed)
    src = torch.randint(4, src_vocab, (3, 7))
    lengths = torch.tensor([7, 5, 2])
    for row, n in enumerate(lengths):
        src[row, n - 1] = EOS_ID
        src[row, n:] = PAD_ID
    tgt_in = torch.randint(4, tgt_vocab, (3, 6))
    tgt_in[:, 0] = BOS_ID
    return src, lengths, src != PAD_ID, tgt_in
