"""Suite-wide setup.

Without CUDA, Triton kernels run under the interpreter (TRITON_INTERPRET=1), which
Triton reads when a kernel is defined: it is set here, before any test imports one.
Tests marked ``gpu`` are skipped when CUDA is absent.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip when this checkout has none beside it."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder {path} is absent")
    return path
