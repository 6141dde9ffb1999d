"""workflow/readme_results.py: the README's results tables are spliced in from results/summary.md."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "workflow" / "readme_results.py"
BEGIN = "<!-- results/summary.md begins -->"
END = "<!-- results/summary.md ends -->"


def run(tmp_path: Path, readme: str, summary: str) -> subprocess.CompletedProcess:
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "summary.md").write_text(summary)
    return subprocess.run([sys.executable, str(SCRIPT), "--readme", str(tmp_path / "README.md"),
                           "--summary", str(tmp_path / "summary.md")], capture_output=True, text=True)


def test_replaces_only_between_markers_and_demotes_headings(tmp_path):
    result = run(tmp_path, f"intro\n{BEGIN}\nold table\n{END}\noutro\n",
                 "# medXGAN results\n\n## synthetic-cxr\n\n| a |\n|---|\n| 1 |\n")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "README.md").read_text() == (
        f"intro\n{BEGIN}\n#### synthetic-cxr\n\n| a |\n|---|\n| 1 |\n{END}\noutro\n")


def test_readme_without_markers_is_an_error_and_left_as_it_was(tmp_path):
    result = run(tmp_path, "no markers here\n", "# medXGAN results\n")
    assert result.returncode == 1
    assert "README needs exactly one" in result.stderr
    assert (tmp_path / "README.md").read_text() == "no markers here\n"


def test_project_readme_has_the_markers():
    readme = (SCRIPT.parents[1] / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
