"""The built extension (setup.py): what it links against."""

import re
import shutil
import subprocess
import sys

import pytest

import sencache_kernels as sk

# Functions that only libstdc++ itself defines (not inline templates an object may carry a copy of).
_LIBSTDCXX_OWN = re.compile(r" [TtWw] std::(locale::|ios_base::|codecvt<)")


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("nm") is None, reason="needs Linux and nm")
def test_extension_uses_the_shared_libstdcxx():
    """A copy of libstdc++ inside the extension crashed the process (SIGSEGV) when a C++ error message formatted a
    shape: streams made by the copy were written by torch's libstdc++ (seen on an H100 machine, where the build carried
    ``std::codecvt`` code). setup.py links the shared library explicitly where the compiler offers only the archive."""
    so = sk._C.__file__
    symbols = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True, check=True).stdout
    own = [line for line in symbols.splitlines() if _LIBSTDCXX_OWN.search(line)]
    assert not own, f"{so} defines libstdc++'s own functions (a static copy): {own[:3]}"
