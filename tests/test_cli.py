"""`medxgan <step>`: the command line is built from the steps' registry, once."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from medxgan.config import ConfigError
from medxgan.pipeline import cli
from medxgan.pipeline.context import STEPS, Argument, step

REPO = Path(__file__).resolve().parents[1]


def test_every_rule_calls_a_registered_step():
    rules = "\n".join(path.read_text() for path in [REPO / "workflow/Snakefile", *REPO.glob("workflow/rules/*.smk")])
    called = set(re.findall(r"\bmedxgan ([a-z][a-z-]+)", rules))
    assert called and called <= set(STEPS), called - set(STEPS)


def test_the_parser_offers_each_step_with_its_own_arguments_and_settings_where_it_has_them(capsys):
    parser = cli.build_parser()
    for name, registered in STEPS.items():
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        assert registered.help.split()[0] in text
        assert ("--settings" in text) == registered.settings, name
        for argument in registered.arguments:
            assert argument.flags[0].lstrip("-").split("-")[0] in text


def test_a_step_name_is_registered_once():
    first = next(iter(STEPS))
    with pytest.raises(ValueError, match="registered twice"):
        step(first, "again", Argument("--out"))(lambda ctx: None)
    assert STEPS[first].help != "again"


def test_a_step_given_no_settings_asks_for_them_in_one_line(capsys, tmp_path):
    out = tmp_path / "count.json"
    assert cli.main(["count-test-positives", "--manifest", str(tmp_path / "m.csv"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("medxgan: error: give --settings JSON, or --config FILE together with "
                                       "--dataset NAME\n")
    assert not out.exists()


@pytest.mark.parametrize("settings, message", [
    ('{"seed": 0,', "--settings is not valid JSON: Expecting property name enclosed in double quotes"),
    ("missing.json", "--settings 'missing.json' is neither JSON text nor a file"),
    ('{"seed": -1, "inversion": {"steps": 0}}', "invalid settings: inversion.steps: 0 is less than the minimum of 1; "
                                                 "seed: -1 is less than the minimum of 0"),
])
def test_bad_settings_are_one_line_on_stderr(capsys, tmp_path, settings, message):
    code = cli.main(["count-test-positives", "--settings", settings, "--manifest", str(tmp_path / "m.csv"),
                     "--out", str(tmp_path / "count.json")])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.startswith(f"medxgan: error: {message}") and stderr.count("\n") == 1, stderr


def test_debug_shows_a_bad_inputs_traceback_and_a_bug_keeps_its_own(tmp_path):
    with pytest.raises(ConfigError, match="give --settings JSON"):
        cli.main(["--debug", "count-test-positives", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")])
    step("divide-by-zero", "a step with a bug", settings=False)(lambda ctx: 1 / 0)
    try:
        with pytest.raises(ZeroDivisionError):
            cli.main(["divide-by-zero"])
    finally:
        del STEPS["divide-by-zero"]


REPEATED_ALLOCATION = """
import resource, sys
import torch
from medxgan.pipeline import cli
if sys.argv[1] == "keep":
    cli.keep_freed_memory()
faults = []
for _ in range(6):  # a step's activations: the same 40 MB allocated and freed again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(10 * 2**20)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[3:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_step_reuses_freed_memory_instead_of_page_faulting_it_in_again():
    def page_faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", REPEATED_ALLOCATION, mode], capture_output=True, text=True,
                              check=True)
        return int(done.stdout)

    pages = 40 * 2**20 // resource.getpagesize()
    assert page_faults("default") > pages // 2  # glibc maps the block afresh each time
    assert page_faults("keep") < pages // 100
