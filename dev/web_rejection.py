"""Share of web pages the math/qa presets reject (what a math corpus should lose).

    python dev/web_rejection.py              # the bundled general-web sample (data/web/README.md)
    python dev/web_rejection.py PAGES...     # .html files (text extracted with inscriptis: the
                                             # whole page, menus included) or .jsonl files with "text"

An earlier figure on news, blog, shop and forum pages was measured on the 109 pages
of trafilatura's test cache (github.com/adbar/trafilatura, tests/cache/*.html at e90b0ef), read
from a checkout: their licence is unclear, so they are not bundled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from inscriptis import get_text

from data_recipes.calibration import general_web, rejection


def page_texts(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        if path.suffix == ".jsonl":
            texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
        else:
            texts.append(get_text(path.read_text(errors="replace")))
    return [t for t in texts if t.strip()]


if __name__ == "__main__":
    texts = page_texts([Path(p) for p in sys.argv[1:]]) if sys.argv[1:] else [p["text"] for p in general_web()]
    for preset in ("math", "qa"):
        print(json.dumps(rejection(texts, preset)))
