"""Shared test set-up: tiny models run on one thread; hypothesis draws the same examples every run;
the end-to-end tests get a working directory of their own."""

from pathlib import Path

import pytest
import torch
from hypothesis import settings
from workflow_runs import tiny_workdir

# Derandomised: a property test checks the same examples on every machine and every run, so a
# failure reproduces and CI cannot turn red by chance. No example database in the working tree.
settings.register_profile("medxgan", derandomize=True, database=None, deadline=None)
settings.load_profile("medxgan")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models: extra threads cost more than they save, many times more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory for an end-to-end run on the tiny test configuration. Its name has a space
    and a non-ASCII letter: every path in the rules' commands must be quoted."""
    return tiny_workdir(tmp_path / "wörk dir")
