"""Kill rate per module of the last `mutmut run` (`make mutants`), and the mutants that lived.

Reads mutmut's result files under mutants/. A mutant listed in tests/equivalent_mutants.txt
(name, then why it cannot change behaviour) is left out of the rate and printed with its reason.
Exit status 1 when a module's rate is under --threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "segfault", "caught by type check"}  # the tests noticed the change
LIVED = {"survived", "no tests", "suspicious"}
EQUIVALENT_LIST = Path(__file__).with_name("equivalent_mutants.txt")


def read_equivalents(path: Path = EQUIVALENT_LIST) -> dict[str, str]:
    """Mutant name -> reason, from lines `name  reason` (blank lines and # comments skipped)."""
    equivalents = {}
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}, line {number}: {name} needs a reason after its name")
        equivalents[name] = reason.strip()
    return equivalents


def statuses(mutants: Path) -> dict[str, str]:
    """Mutant name -> mutmut's status, from every result file under `mutants`."""
    found = {}
    for meta in sorted(mutants.rglob("*.meta")):
        for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = status_by_exit_code[exit_code]
    return found


def module_of(mutant: str) -> str:
    """medxgan.evaluate.metrics.x_pointing_game__mutmut_3 -> medxgan.evaluate.metrics"""
    return mutant.rsplit(".", 1)[0]


def unexplained(found: dict[str, str], equivalents: dict[str, str]) -> list[str]:
    """The mutants that lived and are not listed as equivalent, sorted."""
    return sorted(name for name, status in found.items() if status in LIVED and name not in equivalents)


def report(found: dict[str, str], equivalents: dict[str, str], threshold: float) -> bool:
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in found.items():  # a listed mutant counts as equivalent only while it lives
        kind = "equivalent" if name in equivalents and status in LIVED else status
        by_module[module_of(name)][kind] += 1
    print(f"{'module':<28} {'killed':>7} {'lived':>6} {'equivalent':>11} {'unchecked':>10} {'kill rate':>10}")
    all_pass = True
    for module, counts in sorted(by_module.items()):
        killed = sum(counts[s] for s in KILLED)
        alive = sum(counts[s] for s in LIVED)
        rate = killed / (killed + alive) if killed + alive else float("nan")
        all_pass &= rate >= threshold
        print(f"{module:<28} {killed:>7} {alive:>6} {counts['equivalent']:>11} {counts['not checked']:>10} "
              f"{rate:>9.1%}")
    lived = unexplained(found, equivalents)
    if lived:
        print("\nmutants that lived (`mutmut show NAME` prints the change):")
        for name in lived:
            print(f"  {name}  ({found[name]})")
    used = [name for name in equivalents if found.get(name) in LIVED]
    if used:
        print("\nequivalent mutants (tests/equivalent_mutants.txt):")
        for name in used:
            print(f"  {name}  {equivalents[name]}")
    killed_listed = [name for name in equivalents if found.get(name) in KILLED]
    if killed_listed:
        print("\nlisted as equivalent, but the tests killed them (take them off the list):")
        for name in killed_listed:
            print(f"  {name}")
    return all_pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's folder (default: mutants)")
    parser.add_argument("--equivalents", type=Path, default=EQUIVALENT_LIST,
                        help="the equivalent mutants and why (default: tests/equivalent_mutants.txt)")
    parser.add_argument("--threshold", type=float, default=0.85, help="lowest kill rate per module (default 0.85)")
    parser.add_argument("--lived", action="store_true",
                        help="only print the names of the mutants that lived and are not listed as equivalent, "
                             "one per line (what `make mutants-recheck` tests again)")
    args = parser.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"{args.mutants} not found: run `make mutants` (mutmut run) first", file=sys.stderr)
        return 2
    found, equivalents = statuses(args.mutants), read_equivalents(args.equivalents)
    if args.lived:
        print("\n".join(unexplained(found, equivalents)))
        return 0
    return 0 if report(found, equivalents, args.threshold) else 1


if __name__ == "__main__":
    sys.exit(main())
