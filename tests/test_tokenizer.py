from nmt.config import TokenizerConfig
from nmt.data.tokenizer import Tokenizer
from nmt.runs.loading import load_tokenizer
from nmt.runs.rundir import RunDir
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

EN = ["the cat sat on the mat .", "a dog ran in the park .", "i like tennis .", "she reads books every day ."] * 30
JA = ["私はテニスが好きです。", "猫がマットの上に座った。", "彼女は毎日本を読みます。", "犬が公園を走った。"] * 30


def test_round_trip_english_and_unsegmented_japanese(tmp_path):
    tokenizer = Tokenizer.train(EN, JA, TokenizerConfig(vocab_size=60, character_coverage=1.0))
    for line in JA[:4]:
        ids = tokenizer.encode_tgt([line])[0]
        assert ids and min(ids) > EOS_ID
        assert tokenizer.decode_tgt(ids) == line
    src = tokenizer.encode_src(EN[:4])
    assert all(ids[-1] == EOS_ID for ids in src)
    assert tokenizer.src.decode(src[0][:-1]) == EN[0]
    RunDir(tmp_path).write_tokenizer(tokenizer)
    again = load_tokenizer(RunDir(tmp_path))
    assert again.encode_tgt(JA[:2]) == tokenizer.encode_tgt(JA[:2])


def test_special_ids_are_fixed_and_joint_shares_one_model():
    tokenizer = Tokenizer.train(EN, JA, TokenizerConfig(vocab_size=120, joint=True))
    assert tokenizer.src_proto == tokenizer.tgt_proto
    for processor in (tokenizer.src, tokenizer.tgt):
        assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (
            PAD_ID, UNK_ID, BOS_ID, EOS_ID)
