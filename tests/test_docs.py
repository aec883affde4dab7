"""The docs stay small, linked and in step with the benchmark JSON (standard library only: runs without torch)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import report

pytestmark = pytest.mark.light

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX = 8192
DOCS_MAX = 70 * 1024

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def test_results_page_is_generated_from_the_json():
    assert (ROOT / "docs" / "results.md").read_text() == report.render(), (
        "docs/results.md differs from what bench/results/*.json gives: run python -m bench.report and commit it")


def test_readme_numbers_are_generated_from_the_json():
    text = README.read_text()
    assert text == report.render_readme(text), (
        "the README's numbers differ from what bench/results/*.json gives: run python -m bench.report and commit it")


def test_readme_is_small_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.encode()) <= README_MAX, f"README.md is {len(text.encode())} bytes; the limit is {README_MAX}"
    assert "pip install -r requirements.txt && streamlit run Home.py" in text
    assert "bash .ci/run" in text


def test_docs_fit_their_budget():
    sizes = {p.name: len(p.read_bytes()) for p in DOCS}
    total = sum(sizes.values())
    listing = ", ".join(f"{name} {size}" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]))
    assert total <= DOCS_MAX, f"docs/*.md hold {total} bytes; the limit is {DOCS_MAX}: {listing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text()))


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"
