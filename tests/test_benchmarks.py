"""The benchmark scripts run to their end on tiny settings, so they cannot silently break."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("G(z1, z2)", "C's probability", "C's input gradient", "inversion codes after 5 Adam steps")
# float64 rounding of one kernel is about 1e-16 relative; the batch-invariance tests of
# test_inversion.py and test_explainers.py rely on it staying far below their bounds (1e-9).
FLOAT64_FLOOR = 1e-12


def test_rounding_probe_reports_every_kernel_and_a_float64_floor_under_the_tests_bounds():
    run = subprocess.run([sys.executable, "benchmarks/rounding.py", "--threads", "1", "--widths", "tiny",
                          "--images", "3", "--steps", "5"], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = {}
    for line in run.stdout.splitlines()[2:]:
        kernel, precision, absolute, relative = line.rsplit(maxsplit=3)
        rows[kernel, precision] = float(absolute), float(relative)
    assert set(rows) == {(k, p) for k in KERNELS for p in ("float64", "float32", "bf16")}, run.stdout
    assert all(value >= 0 for pair in rows.values() for value in pair)
    floor = {kernel: rows[kernel, "float64"][1] for kernel in KERNELS}
    assert max(floor.values()) < FLOAT64_FLOOR, f"float64 rounds more than the tests assume on this CPU: {floor}"


def test_speed_benchmark_times_what_the_shipped_config_runs():
    run = subprocess.run([sys.executable, "benchmarks/speed.py", "--threads", "1", "--quick", "--batch", "4"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    cases = [line.split(" | ")[0].removeprefix("| ") for line in run.stdout.splitlines() if line.startswith("| default")]
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["defaults"]
    assert "default width: inversion, batched 4, encoder start, channels-last" in cases  # init: encoder
    assert "default width: encoder training step, batch 4" in cases
    assert config["inversion"]["tuning"]["steps"] > 0 and "default width: lesion-branch tuning, batched 4" in cases
    assert [case.removeprefix("default width: explain, ") for case in cases if ": explain, " in case] == \
        config["explain"]["methods"]
    assert "| batched bf16 inversion vs the per-image fp32 loop, default width |" in run.stdout  # the goals table


def test_tuning_profile_lists_the_operators_of_a_tuning_step_with_their_shapes():
    run = subprocess.run([sys.executable, "benchmarks/tuning_profile.py", "--threads", "1", "--images", "2",
                          "--steps", "1", "--top", "40"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.startswith("lesion-branch tuning, 2 images, 1 thread(s): "), run.stdout
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| aten::")]
    operators = {row[0].removeprefix("| ") for row in rows}
    assert {"aten::convolution_backward", "aten::_fused_adam_"} <= operators, operators
    # the per-image lesion branch runs as a grouped convolution: one group of 8 channels per image
    assert any("[1, 16, 64, 64]" in row[-1] for row in rows if row[0] == "| aten::convolution_backward"), rows
    milliseconds = [float(row[1]) for row in rows]
    assert milliseconds == sorted(milliseconds, reverse=True)  # the slowest operator first


def test_gan_variants_benchmark_times_each_named_generator_and_refuses_an_unknown_one():
    command = [sys.executable, "benchmarks/gan_variants.py", "--threads", "1", "--rounds", "1", "--steps", "1"]
    run = subprocess.run([*command, "--variants", "defaults", "wide"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| defaults") or
            line.startswith("| wide ")]
    assert [row[0].removeprefix("| ") for row in rows] == ["defaults", "wide"]
    assert rows[0][-1] == "1.00x |" and float(rows[1][3]) > 0
    unknown = subprocess.run([*command, "--variants", "huge"], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode != 0 and "unknown variant 'huge'" in unknown.stderr


def test_gan_variants_benchmark_times_a_variant_at_each_image_size():
    run = subprocess.run([sys.executable, "benchmarks/gan_variants.py", "--threads", "1", "--rounds", "1", "--steps",
                          "1", "--variants", "defaults", "--image-sizes", "64", "128"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| defaults")]
    assert [row[0].removeprefix("| ") for row in rows] == ["defaults, 64 px", "defaults, 128 px"], run.stdout
    assert rows[0][-1] == "1.00x |" and float(rows[1][-1].removesuffix("x |")) > 0
