"""SenCache: sensitivity-aware caching for diffusion-transformer video generation.

```python
import sencache
profile = sencache.calibrate(pipe, prompts=[...], num_inference_steps=50)
sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile, eps=0.07))
video = pipe(...).frames
print(sencache.get_stats(pipe))
sencache.remove_sencache(pipe)
```

Importing this package is light: diffusers is imported on first use of the functions that need it, and CUDA is
never initialised by the import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sencache.config import SenCacheConfig
from sencache.profile import SensitivityProfile
from sencache.stats import CallStats

__version__ = "0.1.0"

_LAZY = {
    "apply_sencache": "sencache.hooks",
    "remove_sencache": "sencache.hooks",
    "get_stats": "sencache.hooks",
    "residual_bytes": "sencache.hooks",
    "supported_models": "sencache.adapters",
    "calibrate": "sencache.calibration",
}

__all__ = [
    "CallStats",
    "SenCacheConfig",
    "SensitivityProfile",
    "__version__",
    "apply_sencache",
    "calibrate",
    "get_stats",
    "remove_sencache",
    "residual_bytes",
    "supported_models",
]

if TYPE_CHECKING:
    from sencache.adapters import supported_models
    from sencache.calibration import calibrate
    from sencache.hooks import apply_sencache, get_stats, remove_sencache, residual_bytes


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sencache' has no attribute {name!r}")
