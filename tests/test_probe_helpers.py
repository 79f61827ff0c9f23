"""Tiny local fixtures for the probe tests: a BPE tokenizer, a Llama checkpoint, problem sets.

Nothing is downloaded. `tiny_checkpoint(..., sft_steps=N)` briefly fine-tunes
the random model on boxed-answer QA so that rollouts get mixed rewards (a
random model scores -1 everywhere and GRPO would have zero advantages).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
TEMPLATE = "Question: {question}\nAnswer:"
# two solved examples before the question, as a few-shot template puts them
FEW_SHOT = "".join(TEMPLATE.format(question=f"What is {a} plus {b}?") + f" \\boxed{{{a + b}}}\n"
                   for a, b in ((3, 4), (5, 2)))


def make_problems(n: int, seed: int, data_source: str = "toy/add") -> list[dict]:
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        problems.append(
            {
                "id": f"{data_source}-{seed}-{i}",
                "question": f"What is {a} plus {b}?",
                "answer": str(a + b),
                "difficulty": 1,
                "data_source": data_source,
            }
        )
    return problems


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _qa_text(problem: dict) -> str:
    return f"{TEMPLATE.format(question=problem['question'])} \\boxed{{{problem['answer']}}}{EOS}"


def train_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    texts = [_qa_text(p) for p in make_problems(400, seed=99)] + ["The answer is 12. Wait, let me recheck."] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    hf.save_pretrained(out_dir)
    return hf


def tiny_checkpoint(out_dir: Path, sft_steps: int = 0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    if sft_steps:
        _sft(model, tokenizer, sft_steps)
    model.save_pretrained(out_dir)
    return out_dir


def _sft(model: LlamaForCausalLM, tokenizer, steps: int) -> None:
    texts = [_qa_text(p) for p in make_problems(256, seed=7)]
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = tokenizer(texts[(step * 32) % 256 : (step * 32) % 256 + 32], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()


CHATML = ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def llama_style_tokenizer(out_dir: Path, texts: list[str] | None = None, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A tokenizer as Llama's are: BOS `<s>` added before every text, EOS `</s>`, which differ, plus a
    ChatML chat template whose turns end with `<|im_end|>`."""
    from tokenizers.processors import TemplateProcessing

    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    texts = texts or [_qa_text(p).replace(EOS, "") for p in make_problems(400, seed=99)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                 chat_template=CHATML)
    hf.save_pretrained(out_dir)
    return hf


def random_checkpoint(out_dir: Path, tokenizer, seed: int = 0, **config) -> Path:
    """A random-init tiny Llama (or, with `model_type="qwen2"`, Qwen2) saved with `tokenizer`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    qwen = config.pop("model_type", "llama") == "qwen2"
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                 bos_token_id=tokenizer.bos_token_id, **config)
    model = Qwen2ForCausalLM(Qwen2Config(**shape)) if qwen else LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
