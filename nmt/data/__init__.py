"""Reading corpora, SentencePiece, the prepared cache and token batches."""
