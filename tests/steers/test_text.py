from localdpo.steers.text import IncrementalDecoder, decode, token_pieces


def test_pieces_add_up_to_the_decoded_text_across_a_split_character(smol_tokenizer):
    """SmolLM2 splits "😀" over two tokens (`ĠðŁĺ`, `Ģ`): the first gets "", the second the whole character."""
    ids = smol_tokenizer("1. High-quality 😀 ok", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(smol_tokenizer, ids)
    assert "".join(pieces) == decode(smol_tokenizer, ids) == "1. High-quality 😀 ok"
    assert pieces[-3:] == ["", " 😀", " ok"]
    for k in range(len(ids) + 1):
        if k == 0 or pieces[k - 1]:  # a cut between two whole characters
            assert "".join(pieces[:k]) == decode(smol_tokenizer, ids[:k])


def test_a_trailing_incomplete_character_is_flushed(smol_tokenizer):
    ids = smol_tokenizer(" 😀", add_special_tokens=False)["input_ids"][:1]
    decoder = IncrementalDecoder(smol_tokenizer)
    assert decoder.push(ids[0]) == ""
    assert decoder.flush() == decode(smol_tokenizer, ids) == " \ufffd"
    assert token_pieces(smol_tokenizer, ids) == [" \ufffd"]


def test_special_tokens_are_shown_only_when_asked(smol_tokenizer):
    ids = smol_tokenizer("Hi", add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id]
    assert token_pieces(smol_tokenizer, ids) == ["Hi", "<|im_end|>"]
    assert token_pieces(smol_tokenizer, ids, skip_special_tokens=True) == ["Hi", ""]
