"""Run these tests single-threaded: the models are tiny, and on a shared 2-core machine
a second OpenMP thread competing with other processes made steps ~50x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
