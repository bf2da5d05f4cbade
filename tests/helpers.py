"""Helpers shared by the test modules (no test module imports another; fixtures live in conftest.py)."""

import pytest
import torch

# Where the kernels under test run: natively on CUDA when present, else the CPU (Triton through the interpreter).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
