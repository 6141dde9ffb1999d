"""Shared test set-up: tiny models run on one thread."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models: extra threads cost more than they save, many times more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
