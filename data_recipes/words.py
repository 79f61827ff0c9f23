"""A regex word tokenizer for datatrove blocks that take `language=` (a WordTokenizer instance)."""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

_WORD = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class RegexWordTokenizer(WordTokenizer):
    """Words are runs of letters/digits, every other non-space character is its own token.

    datatrove's English default is spaCy inside a memory zone, ~0.25-0.5 MB/s per core; this is
    an order of magnitude faster. It is used where only word n-grams matter: Gopher repetition
    in the math/QA presets (LaTeX is split symbol by symbol either way), and MinHash and n-gram
    decontamination, which tokenize datatrove's simplified text (lowercase, no punctuation),
    where it yields the same words as spaCy.
    """

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for sentence in self.sent_tokenize(text):
            start = text.index(sentence, start)
            spans.append((start, start + len(sentence)))
            start += len(sentence)
        return spans
