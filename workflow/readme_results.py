"""Copy the DAG's results/summary.md into docs/results.md between its two results markers.

    python workflow/readme_results.py [--summary results/summary.md] [--page docs/results.md]

The results page's tables of the default run are then the workflow's output, not typed by hand
(`make readme` runs this after `make run`). The title line of summary.md is dropped (the page
says where the numbers come from) and its headings are demoted one level, so each dataset's
`## name` sits under the page's `## The default run` as `### name`. The page must hold exactly one
begin marker followed by one end marker; everything outside them is left as it was.
"""

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- results/summary.md begins -->"
END = "<!-- results/summary.md ends -->"


def splice(page: str, summary: str) -> str:
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"the page needs exactly one '{BEGIN}' followed by one '{END}'")
    body = summary.split("\n", 1)[1] if summary.startswith("# ") else summary
    body = "\n".join("#" + line if line.startswith("#") else line for line in body.strip().splitlines())
    head, rest = page.split(BEGIN)
    tail = rest.split(END)[1]
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, default=Path("results/summary.md"))
    parser.add_argument("--page", type=Path, default=Path("docs/results.md"),
                        help="the Markdown page that holds the two markers (default: docs/results.md)")
    args = parser.parse_args(argv)
    try:
        text = splice(args.page.read_text(), args.summary.read_text())
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {args.page}: {error}", file=sys.stderr)
        return 1
    temporary = args.page.with_name(args.page.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(args.page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
