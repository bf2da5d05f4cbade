"""The table of tiny offline pipeline families; ``sencache.offline_pipelines`` is the public API over it.

One module per family (``sencache/offline/<family>.py``) holds its transformer and VAE configs, its call inputs,
its default geometry and the facts a caching adapter needs (:class:`~sencache.offline.family.Facts`).
"""

from __future__ import annotations

from sencache.offline.cogvideox import COGVIDEOX
from sencache.offline.cogview4 import COGVIEW4
from sencache.offline.family import Facts, Family, Request
from sencache.offline.flux import FLUX
from sencache.offline.hunyuanvideo import HUNYUANVIDEO
from sencache.offline.ltx import LTX
from sencache.offline.mochi import MOCHI
from sencache.offline.qwenimage import QWENIMAGE
from sencache.offline.sd3 import SD3
from sencache.offline.wan import WAN, WAN22

__all__ = ["FAMILIES", "Facts", "Family", "Request"]

FAMILIES: dict[str, Family] = {
    family.name: family for family in (WAN, COGVIDEOX, LTX, FLUX, QWENIMAGE, HUNYUANVIDEO, SD3, MOCHI, COGVIEW4, WAN22)
}
