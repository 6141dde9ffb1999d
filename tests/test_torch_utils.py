import random

import numpy as np
import pytest
import torch
from torch import nn

from medxgan.torch_utils import module_device, pick_device, seed_everything


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(()).item()


@pytest.mark.parametrize("seed", [0, 7, 2**32 + 7])
def test_seed_everything_seeds_python_numpy_and_torch(seed):
    seed_everything(seed)
    first = draws()
    seed_everything(seed)
    assert draws() == first
    # NumPy takes seeds below 2**32 only: a larger one is folded into that range
    assert first[1] == np.random.RandomState(seed % 2**32).rand()
    assert first[0] == random.Random(seed).random()
    assert first[2] == torch.rand((), generator=torch.Generator().manual_seed(seed)).item()


def test_other_seeds_give_other_draws_in_every_source():
    seed_everything(1)
    one = draws()
    seed_everything(3)
    three = draws()
    assert all(a != b for a, b in zip(one, three))


@pytest.mark.parametrize("available, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_picks_cuda_exactly_when_it_is_available(monkeypatch, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert pick_device() == pick_device("auto") == torch.device(expected)


@pytest.mark.parametrize("requested", ["cpu", "cuda", "cuda:1", "meta"])
def test_a_named_device_is_taken_as_asked(monkeypatch, requested):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(requested) == torch.device(requested)


def test_a_modules_device_is_its_first_parameters_or_the_cpu_without_parameters():
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert module_device(nn.ReLU()) == torch.device("cpu")
