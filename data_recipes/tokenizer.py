"""Train a small byte-level BPE with one token per digit, saved as an HF tokenizer directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on `texts` and save it so `AutoTokenizer.from_pretrained(out_dir)` loads it.

    Digits are pre-split into single characters so every number is spelled digit by digit
    (arithmetic stays learnable for a tiny model). `<|endoftext|>` is EOS, BOS and pad, and the
    tokenizer adds it before a text as GPT-2's does not: a probe prompt starts with it as every
    document in the Megatron data follows one (`document_special_tokens`).
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
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", special_tokens=[(EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN))])
    tokenizer.save(str(out_dir / "tokenizer.json"))
    # Written by hand rather than through transformers, which would import torch into curation jobs.
    # PreTrainedTokenizerFast resolves in transformers 4 and 5 alike.
    special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out_dir


def document_special_tokens(tokenizer_dir: str | Path) -> tuple[str | None, str]:
    """(BOS or None, EOS): the special tokens around every document in the Megatron data.

    As the tokenizer says: BOS when its post-processor puts one before a text (transformers
    applies the same post-processor, so the probe's prompts start the same way), its configured
    EOS after. A BOS that is also the EOS is not written twice: in packed data the previous
    document's EOS already stands before every document.
    """
    tokenizer_dir = Path(tokenizer_dir)
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    eos = config.get("eos_token")
    eos = (eos.get("content") if isinstance(eos, dict) else eos) or EOS_TOKEN
    encoding = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode("a")
    leading = []
    for token, special in zip(encoding.tokens, encoding.special_tokens_mask):
        if not special:
            break
        leading.append(token)
    bos = leading[-1] if leading else None
    return (bos if bos != eos else None), eos


def document_post_processor(tokenizer_dir: str | Path) -> processors.TemplateProcessing:
    """The post-processor that tokenizes a document as `document_special_tokens` says."""
    bos, eos = document_special_tokens(tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    specials = [(token, tokenizer.token_to_id(token)) for token in (bos, eos) if token is not None]
    return processors.TemplateProcessing(single=(f"{bos} " if bos else "") + f"$A {eos}", special_tokens=specials)
