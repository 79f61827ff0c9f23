"""HF <-> megatron weight conversion against transformers' own LlamaForCausalLM."""

import json

import pytest
import torch

from midtrain.convert import (export_hf, hf_to_megatron, hf_to_megatron_checkpoint, import_hf,
                              load_megatron_weights, megatron_checkpoint_to_hf,
                              megatron_to_hf, megatron_weights)
from midtrain.model import build_gpt_model, init_distributed
from midtrain.spec import ModelSpec, RopeScaling

SHAPES = {
    "tied-gqa": dict(num_attention_heads=4, num_kv_heads=2, tie_embeddings=True),
    "untied-gqa": dict(num_attention_heads=6, num_kv_heads=2, tie_embeddings=False),
    "untied-mha": dict(num_attention_heads=4, num_kv_heads=4, tie_embeddings=False),
    "tied-mqa-llama3-rope": dict(num_attention_heads=4, num_kv_heads=1, tie_embeddings=True,
                                 rope_scaling=RopeScaling(factor=8.0)),
    "qwen2-tied-gqa": dict(num_attention_heads=4, num_kv_heads=2, tie_embeddings=True, qkv_bias=True),
}


@pytest.fixture(scope="module", autouse=True)
def megatron_env():
    torch.set_num_threads(1)
    init_distributed()


def random_spec(**shape) -> ModelSpec:
    heads = shape["num_attention_heads"]
    return ModelSpec(vocab_size=97, hidden_size=16 * heads, num_layers=2, ffn_hidden_size=56,
                     rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=64,
                     init_std=0.25, **shape)


def random_hf_model(spec: ModelSpec, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = spec.to_hf_config()
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    with torch.no_grad():  # non-trivial norms and biases so a swapped norm or bias would show
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return hf.eval()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_hf_to_megatron_logits_match(shape):
    spec = random_spec(**shape)
    hf = random_hf_model(spec, seed=1)
    mc = build_gpt_model(spec).eval()
    load_megatron_weights(mc, hf_to_megatron(hf.state_dict(), spec))
    tokens = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits
        ours = mc(tokens, None, None)
    assert ref.abs().max() > 1.0  # the comparison is not trivially between near-zero logits
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_megatron_to_hf_logits_and_round_trip(shape):
    spec = random_spec(**shape)
    torch.manual_seed(2)
    mc = build_gpt_model(spec).eval()
    with torch.no_grad():
        for p in mc.parameters():
            p.copy_(torch.randn_like(p) * 0.25 + (1.0 if p.dim() == 1 else 0.0))
    weights = megatron_weights(mc)
    hf_weights = megatron_to_hf(weights, spec)
    hf = random_hf_model(spec, seed=3)
    hf.load_state_dict(hf_weights, strict=False)
    if spec.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tokens = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (mc(tokens, None, None) - hf(input_ids=tokens).logits).abs().max().item() < 1e-4
    back = hf_to_megatron(hf_weights, spec)
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_export_loads_with_auto_model_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate("abcdefghij ")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
        tmp_path / "tok")
    spec = random_spec(**SHAPES["tied-gqa"]).model_copy(update={"vocab_size": len(vocab)})
    mc = build_gpt_model(spec).eval()
    out = export_hf(mc, spec, tmp_path / "tok", tmp_path / "hf")

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("abc", return_tensors="pt")
    generated = hf.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5 or (
        generated[0, -1].item() == tokenizer.eos_token_id)
    with torch.no_grad():
        ids = prompt["input_ids"]
        assert (hf(input_ids=ids).logits - mc(ids, None, None)).abs().max().item() < 1e-4

    spec_back, weights_back = import_hf(out)
    assert spec_back == spec
    assert all(torch.equal(weights_back[k], v) for k, v in megatron_weights(mc).items())


def test_a_bf16_export_stores_bf16_weights_that_transformers_loads_as_bf16(tmp_path):
    """A bf16 run's export is half an fp32 one: its weights rounded to bf16, declared so."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    spec = random_spec(**SHAPES["untied-gqa"])
    weights = megatron_weights(build_gpt_model(spec))
    fp32 = export_hf(weights, spec, None, tmp_path / "fp32")
    bf16 = export_hf(weights, spec, None, tmp_path / "bf16", dtype=torch.bfloat16)
    stored = load_file(bf16 / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert all(torch.equal(stored[k], v.to(torch.bfloat16)) for k, v in load_file(fp32 / "model.safetensors").items())
    assert json.loads((bf16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    size = {path.name: (path / "model.safetensors").stat().st_size for path in (fp32, bf16)}
    assert size["bf16"] < 0.51 * size["fp32"]
    assert AutoModelForCausalLM.from_pretrained(bf16, torch_dtype="auto").dtype == torch.bfloat16


@pytest.mark.parametrize("shape", ["untied-gqa", "qwen2-tied-gqa"])
def test_cli_conversions_round_trip_through_a_megatron_checkpoint(tmp_path, shape):
    spec = random_spec(**SHAPES[shape])
    hf = random_hf_model(spec, seed=4)
    hf.save_pretrained(tmp_path / "hf_in")
    hf_to_megatron_checkpoint(tmp_path / "hf_in", tmp_path / "mc")
    megatron_checkpoint_to_hf(tmp_path / "mc", tmp_path / "hf_out", tokenizer_dir=None)
    _, before = import_hf(tmp_path / "hf_in")
    spec_after, after = import_hf(tmp_path / "hf_out")
    assert spec_after == spec
    assert all(torch.equal(before[k], after[k]) for k in before)
    if spec.qkv_bias:  # a Qwen2 checkpoint comes back as one
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(tmp_path / "hf_out").architectures == ["Qwen2ForCausalLM"]
