"""A FineMath-style quality classifier: train a fastText model locally, filter with datatrove's block."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from datatrove.pipeline.filters import FastTextClassifierFilter


class LocalFastTextClassifierFilter(FastTextClassifierFilter):
    """datatrove's FastTextClassifierFilter reading a local model file in place.

    The stock block copies even a local model into the user's HF asset cache first, and a stage
    must not write outside its out_dir.
    """

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            if not Path(self.model_url).is_file():
                raise ValueError(f"fastText classifier model not found: {self.model_url}")
            self._model = _FastText(str(self.model_url))
            available = {label.removeprefix("__label__") for label in self._model.labels}
            for label, _ in (self.keep_labels or []) + (self.remove_labels or []):
                if label not in available:
                    raise ValueError(f"label {label!r} is not in {self.model_url} (labels: {sorted(available)})")
        return self._model


def _fasttext_line(label: str, text: str) -> str:
    return f"__label__{label} " + " ".join(text.split()) + "\n"


def train_classifier(labelled_jsonl: str | Path, out_path: str | Path, text_field: str = "text",
                     label_field: str = "label", holdout: float = 0.1, epochs: int = 10, seed: int = 0) -> dict:
    """Train a fastText classifier on JSONL rows {text, label}; save it to out_path (.bin).

    A seeded `holdout` share is kept out of training to report accuracy. fastText is run with one
    thread and a fixed seed, yet its weights are not bitwise reproducible here (measured); its
    predictions are. lr 0.1 (at 0.5 small corpora diverged to NaN; so, once, did a run at 0.1 on
    real MATH solutions), halved on divergence.
    Returns {"examples", "labels", "holdout_accuracy"}.
    """
    import fasttext

    rows = []
    with open(labelled_jsonl) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                rows.append((str(record[label_field]).replace(" ", "_"), record[text_field]))
    labels = sorted({label for label, _ in rows})
    if len(labels) < 2:
        raise ValueError(f"{labelled_jsonl}: a classifier needs at least two labels, found {labels}")
    random.Random(seed).shuffle(rows)
    n_holdout = int(len(rows) * holdout)
    held_out, train = rows[:n_holdout], rows[n_holdout:]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=out_path.parent) as train_file:
        train_file.writelines(_fasttext_line(label, text) for label, text in train)
        train_file.flush()
        # dim/bucket far below fastText's defaults (100 x 2M buckets = 800 MB): quality classifiers
        # on a few labels need little capacity, and the model ships with the corpus config.
        for lr in (0.1, 0.05, 0.025):  # fastText's SGD diverges now and then on small corpora
            try:
                model = fasttext.train_supervised(train_file.name, epoch=epochs, lr=lr, dim=32, wordNgrams=2,
                                                  bucket=100_000, thread=1, seed=seed, verbose=0)
                break
            except RuntimeError as exc:
                if "NaN" not in str(exc) or lr == 0.025:
                    raise
    model.save_model(str(out_path))
    correct = sum(model.predict(" ".join(text.split()))[0][0] == f"__label__{label}" for label, text in held_out)
    return {"examples": len(train), "labels": labels,
            "holdout_accuracy": correct / len(held_out) if held_out else None}
