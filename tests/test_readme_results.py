"""The documentation: workflow/readme_results.py splices results/summary.md into docs/results.md,
the README stays a front page, and every relative link of README.md and docs/*.md resolves."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflow" / "readme_results.py"
BEGIN = "<!-- results/summary.md begins -->"
END = "<!-- results/summary.md ends -->"
README_MAX_LINES = 450


def run(tmp_path: Path, page: str, summary: str, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "results.md").write_text(page)
    (tmp_path / "summary.md").write_text(summary)
    return subprocess.run([sys.executable, str(SCRIPT), "--page", str(tmp_path / "results.md"),
                           "--summary", str(tmp_path / "summary.md"), *options], capture_output=True, text=True)


def test_replaces_only_between_markers_and_demotes_headings(tmp_path):
    result = run(tmp_path, f"intro\n## The default run\n{BEGIN}\nold table\n{END}\noutro\n",
                 "# medXGAN results\n\n## synthetic-cxr\n\n| a |\n|---|\n| 1 |\n\n## synthetic-mri\n\n- b\n")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results.md").read_text() == (
        f"intro\n## The default run\n{BEGIN}\n### synthetic-cxr\n\n| a |\n|---|\n| 1 |\n\n"
        f"### synthetic-mri\n\n- b\n{END}\noutro\n")


def test_splicing_twice_gives_the_same_page(tmp_path):
    summary = "# medXGAN results\n\n## synthetic-cxr\n\n| a |\n|---|\n| 2 |\n"
    assert run(tmp_path, f"intro\n{BEGIN}\n{END}\n", summary).returncode == 0
    once = (tmp_path / "results.md").read_text()
    assert run(tmp_path, once, summary).returncode == 0
    assert (tmp_path / "results.md").read_text() == once


@pytest.mark.parametrize("page", ["no markers here\n", f"{END}\nreversed\n{BEGIN}\n",
                                  f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n", f"only the first {BEGIN}\n"])
def test_page_without_one_pair_of_markers_is_an_error_and_left_as_it_was(tmp_path, page):
    result = run(tmp_path, page, "# medXGAN results\n")
    assert result.returncode == 1
    assert "needs exactly one" in result.stderr and "results.md" in result.stderr
    assert (tmp_path / "results.md").read_text() == page


def test_missing_summary_is_an_error_and_the_page_is_left_as_it_was(tmp_path):
    page = f"intro\n{BEGIN}\nold\n{END}\n"
    (tmp_path / "results.md").write_text(page)
    result = subprocess.run([sys.executable, str(SCRIPT), "--page", str(tmp_path / "results.md"),
                             "--summary", str(tmp_path / "absent.md")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "absent.md" in result.stderr
    assert (tmp_path / "results.md").read_text() == page


def test_the_default_page_is_docs_results_md(tmp_path):
    """Run from a copy of the repository's layout, without --page: the splice lands in docs/results.md."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "docs" / "results.md").write_text(f"# Results\n{BEGIN}\n{END}\n")
    (tmp_path / "results" / "summary.md").write_text("# medXGAN results\n\n## synthetic-mri\n\nnumbers\n")
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "docs" / "results.md").read_text() == f"# Results\n{BEGIN}\n### synthetic-mri\n\nnumbers\n{END}\n"


def test_project_results_page_has_the_markers_and_the_readme_does_not():
    page = (ROOT / "docs" / "results.md").read_text()
    assert page.count(BEGIN) == 1 and page.count(END) == 1 and page.index(BEGIN) < page.index(END)
    readme = (ROOT / "README.md").read_text()
    assert BEGIN not in readme and END not in readme


def test_make_readme_splices_into_the_results_page():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nreadme:", 1)[1].split("\n\n", 1)[0]
    assert "workflow/readme_results.py" in recipe and "docs/results.md" in recipe


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


# Inline links and images, [text](target) and ![alt](target); code spans and fenced blocks are not links.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def documentation() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_documentation_has_pages_that_link_to_each_other():
    pages = documentation()
    assert len(pages) > 5
    readme_links = {target.split("#")[0] for target in relative_links(ROOT / "README.md")}
    for page in pages[1:]:
        assert f"docs/{page.name}" in readme_links, f"README.md does not link to docs/{page.name}"


@pytest.mark.parametrize("page", documentation(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "page.md").write_text("# Title\n\n## A section: with `code`\n\n"
                                      "[ok](page.md#a-section-with-code) [gone](missing.md) "
                                      "[bad anchor](page.md#nowhere) `[not a link](x.md)`\n"
                                      "```\n[in a fence](y.md)\n```\n[web](https://example.org)\n")
    assert relative_links(tmp_path / "page.md") == ["page.md#a-section-with-code", "missing.md", "page.md#nowhere"]
    assert "a-section-with-code" in anchors(tmp_path / "page.md")
