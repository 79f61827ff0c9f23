"""Corpus sources, datatrove curation, the toy world and Megatron tokenization."""
