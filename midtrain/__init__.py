"""Continued pretraining of Llama-style models on megatron-core."""

import warnings

# megatron-core announces on import that it falls back to torch kernels when
# Apex / TransformerEngine are absent (always, on CPU); that is expected here.
warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine and Apex) (is|are) not installed")
warnings.filterwarnings("ignore", message=r"full scope is deprecated")
# dist_checkpointing (0.16.1) still calls torch.distributed.checkpoint APIs that torch
# has deprecated; the calls work, and the user cannot act on the warnings.
warnings.filterwarnings("ignore", category=FutureWarning,
                        module=r"(megatron\.core\.dist_checkpointing|torch\.distributed\.checkpoint)")
