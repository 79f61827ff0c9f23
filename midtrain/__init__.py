"""Continued pretraining of Llama-style models on megatron-core."""

import warnings

# megatron-core announces on import that it falls back to torch kernels when
# Apex / TransformerEngine are absent (always, on CPU); that is expected here.
warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine and Apex) (is|are) not installed")
warnings.filterwarnings("ignore", message=r"full scope is deprecated")
