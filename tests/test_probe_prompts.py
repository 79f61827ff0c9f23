"""The one prompt rendering: BOS as the tokenizer says, chat templates, stop tokens, and the same
token ids in the embedded engine and verl's dataset."""

import pytest
from transformers import AutoTokenizer

from rl_probe.prompts import Prompter, leading_special_ids
from rl_probe.spec import PROBE_SPECS, resolve_probe_spec
from test_probe_helpers import (llama_style_tokenizer, make_problems, random_checkpoint, train_tokenizer,
                                write_jsonl)

PROBLEM = {"id": "p", "question": "What is 2 plus 3?", "answer": "5", "data_source": "toy/add"}


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-tok")
    llama_style_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def test_plain_templates_start_with_bos_only_when_the_tokenizer_adds_one(llama_tokenizer, tmp_path):
    spec = PROBE_SPECS["toy-smoke-v1"]
    llama = Prompter(llama_tokenizer, spec)
    ids = llama.prompt_ids(PROBLEM)
    bos, eos = llama_tokenizer.bos_token_id, llama_tokenizer.eos_token_id
    assert bos != eos and ids[0] == bos and ids.count(bos) == 1 and eos not in ids
    assert ids[1:] == llama_tokenizer.encode(spec.template.body(PROBLEM["question"]), add_special_tokens=False)

    gpt2_style = train_tokenizer(tmp_path / "eos-only")  # EOS only, adds nothing
    assert leading_special_ids(gpt2_style) == []
    assert Prompter(gpt2_style, spec).render(PROBLEM) == "Question: What is 2 plus 3?\nAnswer:"


def test_chat_templates_render_with_the_tokenizers_template_and_stop_at_its_end_token(llama_tokenizer):
    spec = resolve_probe_spec({"base": "toy-smoke-v1", "template": {
        "text": "{question}\nPut the answer in \\boxed{}.", "chat": True, "system": "Be brief."}})
    prompter = Prompter(llama_tokenizer, spec)
    assert prompter.render(PROBLEM) == ("<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                                        "What is 2 plus 3?\nPut the answer in \\boxed{}.<|im_end|>\n"
                                        "<|im_start|>assistant\n")
    ids = prompter.prompt_ids(PROBLEM)
    assert ids[0] == llama_tokenizer.bos_token_id and ids.count(llama_tokenizer.bos_token_id) == 1
    im_end = llama_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert prompter.stop_ids == sorted({llama_tokenizer.eos_token_id, im_end})
    assert Prompter(llama_tokenizer, spec, generation_eos=[7]).stop_ids == sorted({7, im_end,
                                                                                    llama_tokenizer.eos_token_id})
    # few-shot examples are earlier turns of the conversation; the plain template's go before the question
    shot = {**PROBLEM, "question": "What is 1 plus 1?", "answer": "2"}
    assert "<|im_start|>assistant\n\\boxed{2}<|im_end|>" in prompter.render(PROBLEM, [shot])
    assert prompter.fewshot_stop is None
    plain = Prompter(llama_tokenizer, PROBE_SPECS["toy-smoke-v1"])
    assert plain.render(PROBLEM, [shot]) == ("<s>Question: What is 1 plus 1?\nAnswer: \\boxed{2}\n\n"
                                             "Question: What is 2 plus 3?\nAnswer:")
    assert plain.fewshot_stop == "\nQuestion:"


def test_a_chat_spec_without_a_chat_template_is_refused(tmp_path):
    spec = resolve_probe_spec({"base": "toy-smoke-v1", "template": "chat"})
    with pytest.raises(ValueError, match="the checkpoint's tokenizer has none"):
        Prompter(train_tokenizer(tmp_path), spec)


def test_a_chat_spec_renders_the_same_tokens_in_the_embedded_engine_and_verls_dataset(llama_tokenizer, tmp_path):
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.config import omega_conf_to_dataclass

    from rl_probe.verl_backend import prepare_verl_probe

    checkpoint = random_checkpoint(tmp_path / "ckpt", llama_tokenizer)
    spec = resolve_probe_spec({"base": "octothinker-v1", "template": "chat-boxed", "prompts_per_step": 4,
                               "mini_batch_prompts": 2})
    problems = make_problems(12, seed=1)
    train = write_jsonl(problems, tmp_path / "train.jsonl")
    evals = write_jsonl(make_problems(4, seed=2, data_source="toy/eval"), tmp_path / "eval.jsonl")
    launch = prepare_verl_probe(checkpoint, spec, train, evals, seed=0, out_dir=tmp_path / "out", n_gpus_per_node=1)
    # the tokenizer verl's trainer builds (custom_chat_template applied) and its RL dataset
    tokenizer = omega_conf_to_dataclass(launch.config.actor_rollout_ref.model).tokenizer
    dataset = create_rl_dataset(launch.config.data.train_files, launch.config.data, tokenizer, None, is_train=True)
    prompter = Prompter(AutoTokenizer.from_pretrained(checkpoint), spec)
    for i in (0, 5):
        item = dataset[i]
        raw = tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
        assert raw == prompter.render(problems[i]) and raw.startswith("<s><|im_start|>user\n")
        assert tokenizer(raw, add_special_tokens=False)["input_ids"] == prompter.prompt_ids(problems[i])
