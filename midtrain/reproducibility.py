"""When a midtrain stage's weights are a function of its stage key alone.

On CPU in fp32 they should be, at the stage's thread count and process layout
(both in its key): torch's CPU kernels, MKL's GEMMs and `midtrain.kernels` split
work by thread index and thread count, not by timing, so a busy machine should
change how long a stage takes but not its bits. They are a function of the key *on one kind
of CPU*: torch and MKL pick kernels by instruction set (AVX2, AVX512), and those round float32
differently, so another CPU can draw other weights from the same key (each stage manifest
records `cpu_capability`; docs/results/2026-12-05-toy-base-draw.md). `tests/test_midtrain_reproducible.py`
checks a 2-thread stage alone against the same stage beside two CPU-bound
processes. Three runs of 2-thread stages drew other weights under the same key on the same CPU
(docs/results/2026-11-28-toy-demo.md, docs/results/2026-12-05-fresh-demo.md: from the first
step's forward pass, and 20 reruns under other kernel settings, thread counts and process
histories did not reproduce it); the cause is open, so each run records the digest of its weights.

On CUDA this has not been verified: cuBLAS, TransformerEngine's attention backward
and the embedding backward may accumulate in a run-dependent order unless torch's
deterministic mode is on, which midtrain does not set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CPU = ("bitwise on CPU in fp32 at the stage's thread count and process layout (both in its key), "
       "whatever else the machine runs (tested; two unexplained differences were seen before, "
       "so compare weights_sha256 of reruns)")
CUDA = ("not verified bitwise on CUDA: cuBLAS, TransformerEngine attention and the embedding "
        "backward may accumulate in a run-dependent order (torch's deterministic mode is not set)")


def weights_digest(hf_dir: Path) -> str:
    """sha256 over an HF export's safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def reproducibility(cuda: bool, hf_dir: Path) -> dict:
    """What a midtrain stage run on this device promises, and the digest of the weights it
    made; recorded in its summary.json."""
    return {"bitwise": not cuda, "statement": CUDA if cuda else CPU,
            "weights_sha256": weights_digest(hf_dir)}
