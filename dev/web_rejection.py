"""Share of general web pages the math/qa presets reject (what a math corpus should lose).

    python dev/web_rejection.py PAGES...    # .html files (text extracted with
                                            # inscriptis: the whole page, menus included) or .jsonl files with "text"

No general-web sample is bundled (no small one with a clear licence was found); the README
figure was measured on the 109 real web pages of trafilatura's test cache
(github.com/adbar/trafilatura, tests/cache/*.html at e90b0ef, Apache-2.0 repository), English
and German news, blogs, shops and forums.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

from datatrove.data import Document
from inscriptis import get_text

from data_recipes.filters import build_filters


def page_texts(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        if path.suffix == ".jsonl":
            texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
        else:
            texts.append(get_text(path.read_text(errors="replace")))
    return [t for t in texts if t.strip()]


def rejection(texts: list[str], preset: str) -> dict:
    filters = build_filters(preset)
    reasons = collections.Counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        for name, block in filters.items():
            verdict = block.filter(doc)
            if verdict is not True:
                reasons[verdict[1] if isinstance(verdict, tuple) else name] += 1
                break
    return {"preset": preset, "pages": len(texts), "rejected": round(sum(reasons.values()) / len(texts), 3),
            "reasons": dict(reasons)}


if __name__ == "__main__":
    texts = page_texts([Path(p) for p in sys.argv[1:]])
    for preset in ("math", "qa"):
        print(json.dumps(rejection(texts, preset)))
