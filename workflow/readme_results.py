"""Copy the DAG's results/summary.md into README.md between its two results markers.

    python workflow/readme_results.py [--summary results/summary.md] [--readme README.md]

The README's results tables are then the workflow's output, not typed by hand. The title line
of summary.md is dropped (the README says where the numbers come from) and its headings are
demoted two levels to sit under the README's own.
"""

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- results/summary.md begins -->"
END = "<!-- results/summary.md ends -->"


def splice(readme: str, summary: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"README needs exactly one '{BEGIN}' followed by one '{END}'")
    body = summary.split("\n", 1)[1] if summary.startswith("# ") else summary
    body = "\n".join("##" + line if line.startswith("#") else line for line in body.strip().splitlines())
    head, rest = readme.split(BEGIN)
    tail = rest.split(END)[1]
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, default=Path("results/summary.md"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    try:
        text = splice(args.readme.read_text(), args.summary.read_text())
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    temporary = args.readme.with_name(args.readme.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
