"""Build data/web/general_web.jsonl.gz, the general-web (non-math) calibration sample, from Debian packages.

    apt-get download apache2-doc debian-handbook jargon-text
    for f in *.deb; do mkdir -p x/${f%%_*}; dpkg-deb -x $f x/${f%%_*}; done
    python dev/web_sample.py x    # writes data/web/general_web.jsonl.gz

Pages of two documentation web sites as shipped in HTML (text extracted with inscriptis: the
whole page, menus and footers included, as a crawler's extractor without boilerplate removal
sees it) and the Jargon File cut into glossary pages of whole entries. Provenance and licences:
data/web/README.md. Every n-th page of each site is taken (sorted by path), each page's text
capped at PAGE_CHARS, so the committed sample stays under 1 MB.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

from inscriptis import get_text

from data_recipes.calibration import GENERAL_WEB

PAGE_CHARS = 30_000
GLOSSARY_PAGE_CHARS = 4_000
# (source name, licence, HTML folder inside the extracted packages, take every n-th page)
SITES = [
    ("apache-httpd-2.4-manual", "Apache-2.0", "apache2-doc/usr/share/doc/apache2-doc/manual/en", 4),
    ("debian-handbook-11", "CC-BY-SA-3.0", "debian-handbook/usr/share/doc/debian-handbook/html/en-US", 2),
]
JARGON = "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz"
_JARGON_ENTRY_RE = re.compile(r"\n(?=   :[^\n]+:)")  # an entry starts with "   :headword:"


def site_pages(root: Path) -> list[dict]:
    pages = []
    for source, licence, folder, every in SITES:
        paths = sorted((root / folder).rglob("*.html"))[::every]
        for path in paths:
            text = get_text(path.read_text(errors="replace")).strip()[:PAGE_CHARS]
            pages.append({"id": f"{source}/{path.relative_to(root / folder)}", "source": source,
                          "licence": licence, "text": text})
    return pages


def jargon_pages(root: Path, n_pages: int = 60) -> list[dict]:
    """n_pages glossary pages, evenly spaced through the Jargon File's lexicon, of consecutive whole entries."""
    with gzip.open(root / JARGON, "rt") as f:
        entries = [e.strip() for e in _JARGON_ENTRY_RE.split(f.read()) if e.strip().startswith(":")]
    pages, step = [], len(entries) // n_pages
    for start in range(0, step * n_pages, step):
        chunk, i = [], start
        while i < len(entries) and sum(map(len, chunk)) + len(entries[i]) <= GLOSSARY_PAGE_CHARS:
            chunk.append(entries[i])
            i += 1
        first = re.match(r":([^:]+):", chunk[0]).group(1) if chunk else str(start)
        pages.append({"id": f"jargon-file-4.4.7/{first}", "source": "jargon-file-4.4.7", "licence": "public-domain",
                      "text": "\n\n".join(chunk)})
    return [p for p in pages if p["text"]]


def main() -> None:
    root = Path(sys.argv[1])
    pages = site_pages(root) + jargon_pages(root)
    GENERAL_WEB.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(GENERAL_WEB, "wb", mtime=0) as f:  # mtime=0: the same pages give the same bytes
        f.write("".join(json.dumps(page, ensure_ascii=False) + "\n" for page in pages).encode())
    print(f"{GENERAL_WEB}: {len(pages)} pages, {GENERAL_WEB.stat().st_size} bytes")


if __name__ == "__main__":
    main()
