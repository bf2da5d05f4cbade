import os

# Triton kernels run on the CPU through the interpreter; this must be set before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A fresh, seeded CPU generator per test (inputs are random, never zeros)."""
    return torch.Generator().manual_seed(1234)
