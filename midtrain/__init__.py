"""Continued pretraining of Llama-style models on megatron-core."""
