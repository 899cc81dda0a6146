"""The README and the measurement logs under docs/ link to files that exist: sections moved between them must not
leave a reader at a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page: Path) -> None:
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in targets if t and not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_docs_logs_are_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for log in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{log.name})" in readme, f"docs/{log.name} is not linked from the README"
