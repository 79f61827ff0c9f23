"""Train a small byte-level BPE with one token per digit, saved as an HF tokenizer directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
# Bump when train_tokenizer gives another tokenizer for the same texts and vocab size (part of
# the tokenizer stage's key).
TOKENIZER_CODE_VERSION = 1


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on `texts` and save it so `AutoTokenizer.from_pretrained(out_dir)` loads it.

    Digits are pre-split into single characters so every number is spelled digit by digit
    (arithmetic stays learnable for a tiny model). `<|endoftext|>` is EOS, BOS and pad: documents
    are separated by one EOS in the Megatron data and prompts need no other special token.
    Training is deterministic for the same texts in the same order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    # Written by hand rather than through transformers, which would import torch into curation jobs.
    # PreTrainedTokenizerFast resolves in transformers 4 and 5 alike.
    special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out_dir
