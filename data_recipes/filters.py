"""Quality-filter presets built from datatrove blocks, plus a fast math-aware quality filter.

The stock Gopher-quality and C4 settings drop 96-99% of math text (alphabetic-word
ratio, any "{" drops a document), so the math and QA presets use only Gopher
repetition plus `MathQualityFilter`, which counts equations and LaTeX as content.
Thresholds are set so that genuine short toy documents pass (measured per kind in
tests/test_data_filters.py); real corpora tune them with per-corpus overrides.
"""

from __future__ import annotations

import inspect
import re
import zlib

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from data_recipes.classifier import LocalFastTextClassifierFilter
from data_recipes.words import RegexWordTokenizer

# A word is a run of letters, an integer/decimal, a LaTeX command, or a single math symbol.
_TOKEN = re.compile(r"\\[A-Za-z]+|[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)?|[=+\-*/^_<>≤≥×÷±√∑∫π{}()\[\]|$]")
_MATH_SIGNAL = re.compile(
    r"\d\s*[-+*/×÷=<>]\s*\d"  # an arithmetic relation between numbers
    r"|=\s*-?\d"  # "... = 12"
    r"|\\(?:frac|sqrt|boxed|sum|int|cdot|times|le|ge|pi|alpha|beta|theta)\b"  # common LaTeX
    r"|\$[^$\n]{1,200}\$"  # inline TeX
    r"|\b(?:plus|minus|times|divided by|equals|sum|total|how many)\b",
    re.IGNORECASE,
)
# A worded problem ("Weng earns $12 an hour ... How much did she earn?") has no operator: it is
# math when it states a quantity and ends by asking for one (GSM8K train: 18 % of
# questions have no other signal).
_NUMBER = re.compile(r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|"
                     r"fifty|hundred|thousand|dozen|half|twice|third|quarter|percent)\b", re.IGNORECASE)
_QUESTION_OR_TASK = re.compile(r"\b(?:how|what|which|who|whose|when|where|find|compute|calculate|evaluate|simplify|"
                               r"solve|determine|express|show|prove)\b", re.IGNORECASE)
# Dates, times and ranges of years are not arithmetic ("2019-04-25", "4/25/2019", "10:30", "1999-2004"):
# on web pages they were most of the "a - b" signals of pages with no math at all.
_DATE_OR_TIME = re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b|\b\d{1,2}:\d{2}\b|\b(?:1[89]|20)\d\d\s?[-–]\s?(?:1[89]|20)?\d\d\b")
_ALLOWED_CHARS = re.compile(r"[\w\s.,;:!?'\"()\[\]{}$\\=+\-*/^_<>|%&#@~`≤≥×÷±√∑∫π’“”–—]")


class MathQualityFilter(BaseFilter):
    """Keeps documents that look like math or arithmetic prose; regex only, no word tokenizer.

    Drops (reason in parentheses): too few or too many words (`min_words`, `max_words`), no
    arithmetic/LaTeX signal per `words_per_signal` words (`no_math`), too many characters outside
    text and math notation (`junk_chars`), and documents whose lines are mostly very short
    (`short_lines`, menus and tables of navigation text).
    """

    name = "➗ Math quality"

    def __init__(
        self,
        min_words: int = 5,
        max_words: int = 100_000,
        words_per_signal: int = 200,
        max_junk_char_ratio: float = 0.05,
        max_short_line_ratio: float = 0.7,
        short_line_chars: int = 10,
        exclusion_writer: DiskWriter | None = None,
    ):
        super().__init__(exclusion_writer)
        self.min_words = min_words
        self.max_words = max_words
        self.words_per_signal = words_per_signal
        self.max_junk_char_ratio = max_junk_char_ratio
        self.max_short_line_ratio = max_short_line_ratio
        self.short_line_chars = short_line_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        n_words = len(_TOKEN.findall(text))
        if n_words < self.min_words:
            return False, "min_words"
        if n_words > self.max_words:
            return False, "max_words"
        # per signal, a formula or an Asymptote figure is one word: it is content, not prose
        n_signals = len(_MATH_SIGNAL.findall(_DATE_OR_TIME.sub(" ", text))) + _asks_for_a_quantity(text)
        if n_signals == 0 or len(_TOKEN.findall(_math_as_words(text))) / n_signals > self.words_per_signal:
            return False, "no_math"
        junk = len(text) - len(_ALLOWED_CHARS.findall(text))
        if junk / len(text) > self.max_junk_char_ratio:
            return False, "junk_chars"
        lines = [line for line in text.splitlines() if line.strip()]
        short = sum(len(line.strip()) < self.short_line_chars for line in lines)
        if len(lines) >= 3 and short / len(lines) > self.max_short_line_ratio:
            return False, "short_lines"
        return True


def _asks_for_a_quantity(text: str) -> bool:
    """A worded problem: a quantity, and its last 250 characters ask a question or set a task."""
    tail = text[-250:]
    return _NUMBER.search(text) is not None and _QUESTION_OR_TASK.search(tail) is not None


# Math spans count as one word each in the math/QA presets' repetition checks: LaTeX split symbol
# by symbol repeats by nature ("\frac{1}{4}" twice is ten repeated tokens), which dropped 9 % of
# MATH-train question+solution documents as duplicated 5-grams; an equation repeated verbatim
# still repeats as a word, and looping prose ("The answer is 9." x 20) is untouched.
_MATH_SPAN = re.compile(
    r"\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)|\\begin\{(\w+\*?)\}.*?\\end\{\1\}"
    r"|\[asy\].*?\[/asy\]|<<[^<>]*>>", re.DOTALL)


def _math_as_words(text: str) -> str:
    return _MATH_SPAN.sub(lambda m: f" m{zlib.crc32(m.group().encode()):08x} ", text)


class ProseRepetitionFilter(GopherRepetitionFilter):
    """Gopher's repetition checks with every math span (inline or display TeX, LaTeX environments,
    Asymptote code, GSM8K `<<a*b=c>>` annotations) replaced by one word that names its content."""

    name = "👯 Gopher Repetition (math spans as words)"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return super().filter(Document(text=_math_as_words(doc.text), id=doc.id))


FILTER_BLOCKS = {
    # a trained quality classifier, e.g. {"model_url": "math.bin", "keep_labels": [["math", 0.5]]}
    "fasttext_classifier": LocalFastTextClassifierFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "prose_repetition": ProseRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
    "math_quality": MathQualityFilter,
}

# The filter arguments that name a local file: a sweep reads them relative to the sweep file,
# checks them before any stage runs, and keys curation on the file's content, so a retrained
# classifier written over the old one re-curates instead of reusing the old result.
FILTER_FILE_ARGUMENTS = {"fasttext_classifier": "model_url"}

# Preset name -> {filter block: kwargs}; order is pipeline order (cheap repetition checks first).
# datatrove scores the most common n-gram even when it occurs once, so on documents under
# ~150 characters a single 4-gram already exceeds Gopher's 16% "top n-gram" limit; the
# duplicated-n-gram checks (which catch boxed-then-repeat text) stay at Gopher's values.
_REPETITION = {"top_n_grams": ()}
# In the math/QA presets repetition is counted on regex words: spaCy is most of the cost of
# the stock chain and splits LaTeX no better. Worked solutions restate the problem, so
# Gopher's prose limits (15% of characters in duplicated 5-grams) drop nearly every toy
# worked solution. 35% for 5-grams (2 points less per extra word, as Gopher scales) is the
# limit that keeps worked solutions and math-web examples and drops boxed-then-repeat text
# (data_recipes/calibration.py, tests/test_data_filters.py).
_FAST_REPETITION = {**_REPETITION, "language": RegexWordTokenizer(),
                    "dup_n_grams": tuple((n, 0.35 - 0.02 * (n - 5)) for n in range(5, 11))}

# Preset name -> {filter block: kwargs}; order is pipeline order (cheap repetition checks first).
PRESETS: dict[str, dict[str, dict]] = {
    "web": {
        "gopher_repetition": _REPETITION,
        # Toy web docs are 3-6 short sentences with digits and symbolic facts ("7 + 5 = 12."):
        # the stock 50-word minimum, 3-char mean word length, 2 stop words and 80% alphabetic
        # words would drop genuine ones (at 1 stop word and 50% alphabetic, 22% were dropped).
        "gopher_quality": {"min_doc_words": 10, "min_avg_word_length": 2, "min_stop_words": 0,
                           "max_non_alpha_words_ratio": 0.3},
        # C4's line rules rewrite kept documents (they delete lines without terminal
        # punctuation or under 3 words, e.g. "Answer: \\boxed{9}"), so only its document-level
        # checks (lorem ipsum, javascript, policy boilerplate) are on.
        "c4_quality": {"filter_no_terminal_punct": False, "min_num_sentences": -1, "min_words_per_line": -1,
                       "filter_curly_bracket": False},
        "fineweb_quality": {},
    },
    "math": {"prose_repetition": _FAST_REPETITION, "math_quality": {}},
    "qa": {"prose_repetition": _FAST_REPETITION, "math_quality": {"min_words": 8}},
    "none": {},
}


def filter_settings(preset: str, overrides: dict[str, dict | None] | None = None) -> dict[str, dict]:
    """The keyword arguments of `preset`'s filter blocks, in pipeline order, with `overrides`
    (block name -> extra kwargs, or None to drop the block) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown curation preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = {name: dict(kwargs) for name, kwargs in PRESETS[preset].items()}
    for name, kwargs in (overrides or {}).items():
        if name not in FILTER_BLOCKS:
            raise ValueError(f"unknown filter {name!r} in curation overrides; choose from {sorted(FILTER_BLOCKS)}")
        if kwargs is None:
            spec.pop(name, None)
        else:
            spec[name] = {**spec.get(name, {}), **kwargs}
    return spec


def resolved_filter_settings(preset: str, overrides: dict[str, dict | None] | None = None) -> dict[str, dict]:
    """Every argument of every filter block as it will run, its class's defaults filled in
    (JSON-able: objects by class name): what a curation stage key hashes, so a changed
    threshold re-curates."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return type(value).__qualname__

    resolved = {}
    for name, kwargs in filter_settings(preset, overrides).items():
        params = inspect.signature(FILTER_BLOCKS[name].__init__).parameters
        defaults = {k: p.default for k, p in params.items()
                    if k not in ("self", "exclusion_writer") and p.default is not inspect.Parameter.empty}
        resolved[name] = {k: plain(v) for k, v in {**defaults, **kwargs}.items()}
    return resolved


def build_filters(preset: str, overrides: dict[str, dict | None] | None = None) -> dict[str, BaseFilter]:
    """datatrove filter blocks for `preset`, in pipeline order, by name; `overrides` maps a block
    name to extra kwargs, or to None to drop it."""
    return {name: FILTER_BLOCKS[name](**kwargs) for name, kwargs in filter_settings(preset, overrides).items()}
