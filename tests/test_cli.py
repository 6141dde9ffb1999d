"""`medxgan <step>`: the command line is built from the steps' registry, once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_a_step_given_no_settings_asks_for_them_in_one_line(caplog, tmp_path):
    out = tmp_path / "count.json"
    assert cli.main(["count-test-positives", "--manifest", str(tmp_path / "m.csv"), "--out", str(out)]) == 1
    assert "give --settings JSON, or --config FILE together with --dataset NAME" in caplog.text
    assert not out.exists()
