"""Weighted blends of Megatron indexed datasets, built with megatron-core's GPTDataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import (
    BlendedMegatronDatasetBuilder,
)
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from pydantic import BaseModel, ConfigDict, Field, field_validator

# megatron logs every index it builds and warns that uncached indices are not saved.
logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)


class BlendPart(BaseModel):
    """One corpus of a blend: Megatron .bin/.idx prefixes sampled with `weight`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    prefixes: list[str] = Field(min_length=1)
    weight: float = Field(gt=0)

    @field_validator("prefixes")
    @classmethod
    def _absolute(cls, prefixes: list[str]) -> list[str]:
        # Existence is checked when the blend is built: a plan may name prefixes
        # that an upstream stage has not written yet.
        for prefix in prefixes:
            if not Path(prefix).is_absolute():
                raise ValueError(f"prefix {prefix!r} must be an absolute path")
        return prefixes


class _TokenIds:
    """The tokenizer fields GPTDataset reads. Samples are packed, never padded, so the
    pad id is one no token has (megatron would otherwise mask and zero pad==eos tokens)."""

    def __init__(self, vocab_size: int, eod: int):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = -1
        self.unique_identifiers = {"vocab_size": vocab_size, "eod": eod}


@dataclass
class BlendData:
    train: torch.utils.data.Dataset  # megatron BlendedDataset; samples carry "dataset_id"
    part_of_dataset: list[int]  # train sample["dataset_id"] -> index into the blend
    valid: dict[str, torch.utils.data.Dataset]  # blend part name -> its validation samples


def _token_count(prefix: str, split: str) -> int:
    """Tokens in `prefix`, after checking that both splits get documents: megatron
    loops forever building an epoch over an empty document range."""
    # Keep the dataset alive while reading: its index is an mmap that closes on
    # deletion, and numpy views into a closed mmap segfault.
    dataset = IndexedDataset(prefix)
    n_docs = len(dataset.sequence_lengths)
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    # The document ranges GPTDataset will use (BlendedMegatronDatasetBuilder's rounding).
    ranges = [round(end * n_docs) - round(beg * n_docs) for beg, end in matrix[:2]]
    if min(ranges) < 1:
        raise ValueError(f"{prefix}: {n_docs} documents are too few for the "
                         f"train/validation split {split}")
    return int(dataset.sequence_lengths.sum())


def _flatten(blend: list[BlendPart], split: str) -> tuple[list[str], list[float], list[int]]:
    """Per-prefix weights: a part's weight spread over its prefixes by token count,
    so a multi-file corpus is sampled like one concatenated file."""
    prefixes, weights, part_index = [], [], []
    for i, part in enumerate(blend):
        for prefix in part.prefixes:
            for suffix in (".bin", ".idx"):
                if not Path(prefix + suffix).exists():
                    raise FileNotFoundError(f"blend part {part.name!r}: {prefix + suffix} is missing")
        tokens = [_token_count(p, split) for p in part.prefixes]
        if sum(tokens) == 0:
            raise ValueError(f"blend part {part.name!r} has no tokens")
        for prefix, n in zip(part.prefixes, tokens):
            if n:
                prefixes.append(prefix)
                weights.append(part.weight * n / sum(tokens))
                part_index.append(i)
    return prefixes, weights, part_index


def build_blend(blend: list[BlendPart], *, seq_length: int, train_samples: int,
                valid_samples: int, valid_percent: float, seed: int, vocab_size: int,
                eod: int, cache_dir: Path) -> BlendData:
    """Train samples from the weighted blend and `valid_samples` held-out samples per part.

    Every prefix is split by document into train / validation ranges
    (`valid_percent`), so validation text is never trained on. megatron's sample indices are
    cached in `cache_dir`, the training run's own directory: by default megatron writes them
    beside the `.bin/.idx` files, into another (published, possibly read-only) run.
    """
    if len({p.name for p in blend}) != len(blend):
        raise ValueError("blend part names must be unique")
    split = f"{100 - valid_percent},{valid_percent},0"

    def build(prefixes, weights, sizes):
        config = GPTDatasetConfig(
            random_seed=seed, sequence_length=seq_length, blend=(prefixes, weights),
            split=split, path_to_cache=str(cache_dir), tokenizer=_TokenIds(vocab_size, eod),
            reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
            # The model's attention is causal by construction; a mask per sample is waste.
            create_attention_mask=False, mmap_bin_files=True,
        )
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()

    prefixes, weights, part_index = _flatten(blend, split)
    train = build(prefixes, weights, [train_samples, 0, 0])[0]
    valid = {}
    for i, part in enumerate(blend):
        own = [k for k, p in enumerate(part_index) if p == i]
        valid[part.name] = build([prefixes[k] for k in own], [weights[k] for k in own],
                                 [0, valid_samples, 0])[1]
    return BlendData(train=train, part_of_dataset=part_index, valid=valid)


def collate(samples: list[dict], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(tokens, labels, loss_mask) batches, each [batch, seq], on `device`."""
    return tuple(torch.stack([s[key] for s in samples]).to(device)
                 for key in ("tokens", "labels", "loss_mask"))
