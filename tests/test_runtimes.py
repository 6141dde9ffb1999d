"""Gathering Snakemake's benchmark files: one row per job, the file named when one is broken."""

import pytest

from medxgan.report.runtimes import RUN_WIDE, collect

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(path, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(line + "\n" for line in lines))


def test_jobs_of_each_dataset_and_of_the_run_longest_first(tmp_path):
    write(tmp_path / "a" / "benchmarks" / "train_gan.tsv", "90.5\t0:01:30\t512.0\t900\t400\t420\t1\t2\t98.0\t88.0")
    write(tmp_path / "a" / "benchmarks" / "invert.tsv", "40.0\t0:00:40\t300.0\t900\t400\t420\t1\t2\t97.0\t39.0")
    write(tmp_path / "b" / "benchmarks" / "invert.tsv",  # two repeats are averaged
          "10.0\t0:00:10\t100.0\t900\t400\t420\t1\t2\t50.0\t5.0", "20.0\t0:00:20\t200.0\t900\t400\t420\t1\t2\t70.0\t15.0")
    write(tmp_path / "benchmarks" / "summarize.tsv", "2.0\t0:00:02\t80.0\t900\t400\t420\t1\t2\t90.0\t1.5")
    write(tmp_path / "c" / "benchmarks" / "invert.tsv", "1.0\t0:00:01\t1.0\t1\t1\t1\t1\t1\t1.0\t1.0")  # not asked for
    table = collect(tmp_path, ["a", "b"])
    assert list(zip(table.dataset, table.job)) == [(RUN_WIDE, "summarize"), ("a", "train_gan"), ("a", "invert"),
                                                   ("b", "invert")]
    b = table[table.dataset == "b"].iloc[0]
    assert (b.seconds, b.max_rss_mb, b.cpu_seconds, b.mean_load) == (15.0, 150.0, 10.0, 60.0)


def test_a_file_that_is_no_benchmark_is_named(tmp_path):
    path = tmp_path / "a" / "benchmarks" / "train_gan.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("seconds\n3\n")
    with pytest.raises(ValueError, match=r"train_gan\.tsv is not a Snakemake benchmark file \(no columns"):
        collect(tmp_path, ["a"])
