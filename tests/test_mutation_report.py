"""tests/mutation_report.py, which `make mutants` ends with: rates per module from mutmut's result
files, equivalents left out with their reasons, and the survivors listed."""

import json

import pytest

import mutation_report

# mutmut's exit codes: 1 killed, 0 survived, 33 no tests, -24 timeout (killed), None not checked
RESULTS = {
    "src/medxgan/evaluate/metrics.py.meta": {"medxgan.evaluate.metrics.x_a__mutmut_1": 1, "medxgan.evaluate.metrics.x_a__mutmut_2": 0,
                                    "medxgan.evaluate.metrics.x_a__mutmut_3": 0, "medxgan.evaluate.metrics.x_b__mutmut_1": -24},
    "src/medxgan/data/manifest.py.meta": {"medxgan.data.manifest.x_c__mutmut_1": 33,
                                          "medxgan.data.manifest.x_c__mutmut_2": None},
}


@pytest.fixture
def mutants(tmp_path):
    for path, codes in RESULTS.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path


def test_rates_leave_equivalents_out_and_count_timeouts_as_killed(mutants, capsys):
    equivalents = {"medxgan.evaluate.metrics.x_a__mutmut_3": "a chunk size only"}
    passed = mutation_report.report(mutation_report.statuses(mutants), equivalents, threshold=0.6)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:3]}
    assert rows["medxgan.evaluate.metrics"] == ["2", "1", "1", "0", "66.7%"]
    assert rows["medxgan.data.manifest"] == ["0", "1", "0", "1", "0.0%"]  # no tests counts as lived
    assert not passed  # manifest is under the threshold
    assert "medxgan.evaluate.metrics.x_a__mutmut_2  (survived)" in out and "x_a__mutmut_3  a chunk size only" in out


def test_a_listed_mutant_that_is_killed_or_unchecked_is_not_counted_as_equivalent(mutants, capsys):
    equivalents = {"medxgan.evaluate.metrics.x_a__mutmut_1": "wrongly listed", "medxgan.data.manifest.x_c__mutmut_2": "not run"}
    mutation_report.report(mutation_report.statuses(mutants), equivalents, threshold=0.0)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:3]}
    assert rows["medxgan.evaluate.metrics"] == ["2", "2", "0", "0", "50.0%"]
    assert rows["medxgan.data.manifest"] == ["0", "1", "0", "1", "0.0%"]
    assert "take them off the list):\n  medxgan.evaluate.metrics.x_a__mutmut_1" in out and "wrongly listed" not in out


def test_lived_lists_only_the_survivors_not_explained(mutants, tmp_path, capsys):
    listed = tmp_path / "equivalents.txt"
    listed.write_text("# why each cannot change a result\n\nmedxgan.evaluate.metrics.x_a__mutmut_3  a chunk size only\n")
    assert mutation_report.main(["--mutants", str(mutants), "--equivalents", str(listed), "--lived"]) == 0
    assert capsys.readouterr().out.split() == ["medxgan.data.manifest.x_c__mutmut_1", "medxgan.evaluate.metrics.x_a__mutmut_2"]


def test_an_equivalent_without_a_reason_names_its_line(tmp_path):
    listed = tmp_path / "equivalents.txt"
    listed.write_text("# comment\nmedxgan.evaluate.metrics.x_a__mutmut_3\n")
    with pytest.raises(SystemExit, match=r"equivalents\.txt, line 2: medxgan\.evaluate\.metrics\.x_a__mutmut_3 needs a reason"):
        mutation_report.read_equivalents(listed)


def test_a_missing_mutants_folder_says_to_run_the_mutation_test_first(tmp_path, capsys):
    assert mutation_report.main(["--mutants", str(tmp_path / "mutants")]) == 2
    assert "run `make mutants`" in capsys.readouterr().err
