"""The special token ids every layer agrees on: the data pipeline writes them, the models pad and start with
them, search stops at EOS. SentencePiece models are trained to put them at these ids (data/tokenizer.py)."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
