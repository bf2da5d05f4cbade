import subprocess
import sys


def test_imports_do_not_initialise_cuda():
    code = (
        "import torch\n"
        "def boom(*a, **k):\n"
        "    raise AssertionError('CUDA was initialised during import')\n"
        "torch.cuda._lazy_init = boom\n"
        "import sencache, sencache_kernels\n"
        "sencache.apply_sencache, sencache.calibrate, sencache.get_stats  # the lazily imported parts too\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
