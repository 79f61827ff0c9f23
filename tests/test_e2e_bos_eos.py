"""A tokenizer whose BOS is not its EOS (as Llama's), through curation, mid-training and the probe:
every stage treats the special tokens as the tokenizer says."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from data_recipes.curate import CorpusConfig, ExecutorConfig, curate_corpus
from data_recipes.toyworld import ToyWorld, ToyWorldConfig
from midtrain.data import BlendPart
from midtrain.model import init_distributed
from midtrain.spec import preset
from midtrain.train import TrainConfig, train
from rl_probe.embedded import run_probe
from rl_probe.prompts import Prompter
from rl_probe.spec import get_probe_spec
from test_probe_helpers import llama_style_tokenizer, make_problems, write_jsonl

WORLD = ToyWorldConfig(seed=0)


@pytest.mark.slow  # ~45 s: the default suite covers each stage's rule (test_data_curate, test_probe_prompts)
def test_bos_and_eos_from_curation_through_midtraining_to_the_probe(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    torch.set_num_threads(1)
    texts = [d["text"] for d in ToyWorld(WORLD).documents("qa_cot", 300)]
    tok = llama_style_tokenizer(tmp_path / "tok", texts + [p["question"] for p in make_problems(50, 3)],
                                vocab_size=384)
    bos, eos, im_end = tok.bos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    assert bos != eos

    # curation: every document between BOS and EOS
    curated = curate_corpus(CorpusConfig(source={"type": "toy", "kind": "qa_cot", "docs": 200}), tmp_path / "tok",
                            [], tmp_path / "curate", ExecutorConfig(), toy_world=WORLD)
    prefixes = [str(tmp_path / "curate" / p) for p in curated["prefixes"]]
    documents = IndexedDataset(prefixes[0])
    assert all(documents[i][0] == bos and documents[i][-1] == eos and (documents[i] == bos).sum() == 1
               for i in range(len(documents)))

    # mid-training on them; the HF export carries the tokenizer's BOS, EOS and chat template
    init_distributed()
    model = preset("toy-xs", vocab_size=len(tok))
    config = TrainConfig(tokens=128 * 8 * 3, seq_length=128, micro_batch_size=8, checkpoint_every_tokens=None,
                         eval_every_steps=3, eval_tokens=512)
    train(model, config, [BlendPart(name="qa_cot", prefixes=prefixes, weight=1.0)], tmp_path / "midtrain",
          init=None, tokenizer_dir=tmp_path / "tok")
    hf = tmp_path / "midtrain" / "hf"
    exported = json.loads((hf / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (bos, eos)
    assert AutoTokenizer.from_pretrained(hf).chat_template == tok.chat_template

    # the probe: prompts start with BOS once, as documents did; responses stop at EOS or <|im_end|>
    spec = get_probe_spec("toy-smoke-v1").model_copy(update={"steps": 1, "eval_every": 1, "profile_problems": 2,
                                                              "fewshot_k": 1})
    train_set = write_jsonl(make_problems(8, seed=1), tmp_path / "train.jsonl")
    eval_set = write_jsonl(make_problems(4, seed=2), tmp_path / "eval.jsonl")
    run_probe(hf, spec, train_set, eval_set, seed=0, out_dir=tmp_path / "probe")
    prompter = Prompter(AutoTokenizer.from_pretrained(hf), spec)
    assert prompter.stop_ids == sorted({eos, im_end})
    rows = [json.loads(line) for line in (tmp_path / "probe" / "rollouts" / "step_0.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["prompt"].startswith("<s>Question: ") and "</s>" not in row["prompt"]
        ids = prompter.encode(row["prompt"])
        assert ids[0] == bos and ids.count(bos) == 1
