import os

import torch

# Triton kernels run natively on a GPU and, without one, on the CPU through the interpreter; this must be decided
# before any kernel module is imported.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A fresh, seeded CPU generator per test (inputs are random, never zeros)."""
    return torch.Generator().manual_seed(1234)
