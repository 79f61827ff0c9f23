"""The BPE tokenizer: deterministic, one token per digit, exact round trip, loads via AutoTokenizer."""

import json

from transformers import AutoTokenizer

from data_recipes.tokenizer import EOS_TOKEN, document_special_tokens, train_tokenizer
from data_recipes.toyworld import CORPUS_KINDS, ToyWorld


def _texts():
    world = ToyWorld()
    return [d["text"] for kind in CORPUS_KINDS for d in world.documents(kind, 200)]


def test_tokenizer_round_trip_digits_and_autotokenizer(tmp_path):
    out = train_tokenizer(_texts(), 320, tmp_path / "a")
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    again = train_tokenizer(_texts(), 320, tmp_path / "b")
    assert (out / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 320
    assert tok.eos_token == EOS_TOKEN and tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids(EOS_TOKEN)
    text = "Question: Tom has 17 apples. He gets 5 more.\nAnswer: 17 + 5 = 22. The answer is \\boxed{22}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id not in ids
    assert tok.decode(ids) == text
    # it adds its BOS, which is its EOS: a prompt starts as every document does in the Megatron data
    assert tok(text)["input_ids"] == [tok.eos_token_id] + ids
    assert document_special_tokens(out) == (None, EOS_TOKEN)  # ... so curation writes it once, as EOS
    pieces = tok.convert_ids_to_tokens(tok("x 1234567890 = 2026")["input_ids"])
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == list("1234567890") + list("2026")
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
