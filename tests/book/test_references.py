"""The bibliography reads cleanly: arXiv papers linked, no raw TeX, no year given twice."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = re.split(r"\n(?=@)", (ROOT / "book" / "references.bib").read_text())


def test_every_arxiv_paper_links_its_abstract_page():
    for entry in ENTRIES:
        for ident in set(re.findall(r"arXiv:(\d{4}\.\d{4,5})", entry)):
            assert f"url     = {{https://arxiv.org/abs/{ident}}}" in entry or \
                f"url       = {{https://arxiv.org/abs/{ident}}}" in entry, entry.splitlines()[0]


def test_no_raw_tex_math_or_doubled_years():
    for entry in ENTRIES:
        assert "$" not in entry, entry.splitlines()[0]  # pybtex prints it as it is
        assert not re.search(r"note\s*=\s*\{[^}]*\(\d{4}\)\}", entry), entry.splitlines()[0]
