"""Device-resident decision state: everything the per-step decision reads and writes lives on the latent's device."""

from __future__ import annotations

from typing import Any

import torch

from sencache_kernels.commit import commit
from sencache_kernels.decide import COMPUTE, decide

# The decide op's dispatcher entry, called without OpOverloadPacket's and OpOverload's Python frames (the eager step's
# host cost: about 6 µs of the op's 35 µs per call on the 2-core dev CPU).
_DECIDE = torch.ops.sencache.decide.default._op


class DecisionState(torch.nn.Module):
    """The decision state of one batch, held in registered buffers on the latent's device.

    Buffers: ``x_ref`` (the latent of the last computed step), ``t_ref``, ``jx_ref``, ``jt_ref`` (its timestep and
    sensitivities, float32 ``[B]``), ``skips`` (consecutive skips, int32), ``flag`` (the last decision, int32 with
    the ``COMPUTE``/``NONFINITE`` bits), ``score`` (last per-sample scores), the per-step inputs ``eps`` and
    ``force``, and ``ticket`` (the fused kernel's arrival counter, zero between calls). Being buffers, they move with
    ``.to()``, keep their addresses under CUDA-graph capture, and are static inputs for ``torch.compile``.

    Args:
        like: a latent ``[B, ...]``; the state is allocated for its batch size, shape, dtype and device.
    """

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        b, dev = like.shape[0], like.device
        self.register_buffer("x_ref", torch.zeros(like.shape, dtype=like.dtype, device=dev))
        for name in ("t_ref", "jx_ref", "jt_ref", "score"):
            self.register_buffer(name, torch.zeros(b, dtype=torch.float32, device=dev))
        self.register_buffer("skips", torch.zeros((), dtype=torch.int32, device=dev))
        self.register_buffer("flag", torch.ones((), dtype=torch.int32, device=dev))
        self.register_buffer("eps", torch.zeros((), dtype=torch.float32, device=dev))
        self.register_buffer("force", torch.ones((), dtype=torch.bool, device=dev))
        self.register_buffer("ticket", torch.zeros((), dtype=torch.int32, device=dev))
        # The one host read per eager step goes through a pinned buffer (a plain CPU tensor off CUDA).
        self._host_flag = torch.zeros((), dtype=torch.int32, pin_memory=dev.type == "cuda")
        self._inputs: tuple[float, bool] | None = None  # the eps and force the buffers hold, where known

    def matches(self, x: torch.Tensor) -> bool:
        """Whether this state was allocated for a latent like ``x`` (shape, dtype, device)."""
        r = self._buffers["x_ref"]
        return r.shape == x.shape and r.dtype == x.dtype and r.device == x.device

    def set_inputs(self, eps: float, force: bool) -> None:
        """Set the step's tolerance and forcing (two device fills, no sync); ``step`` reads them from the buffers."""
        self.eps.fill_(eps)
        self.force.fill_(force)
        self._inputs = (eps, force)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._inputs = None  # the loaded eps and force may differ from the last ones set
        super()._load_from_state_dict(*args, **kwargs)

    def step(
        self, x: torch.Tensor, t: torch.Tensor, jx_now: torch.Tensor, jt_now: torch.Tensor, max_skips: int
    ) -> None:
        """The fused decision for latent ``x`` at per-sample timesteps ``t`` (float32 ``[B]``), then the reference
        update of a computed step (``commit``); no host sync, traceable by ``torch.compile``."""
        decide(x, t, jx_now, jt_now, self.eps, self.force, self.x_ref, self.t_ref, self.jx_ref, self.jt_ref,
               self.skips, self.flag, self.score, self.ticket, max_skips)
        commit(self.flag, x, None, self.x_ref)

    def decide(
        self, x: torch.Tensor, t: torch.Tensor, jx_now: torch.Tensor, jt_now: torch.Tensor, eps: float,
        force: bool, max_skips: int, score: torch.Tensor | None = None,
    ) -> int:
        """One eager step: the fused decision, the host read of its flag (the step's one sync) and, on a computed
        step, the reference update ``x_ref <- x`` (what ``commit`` does, chosen by the host that read the flag).
        Returns the flag. The fills of ``eps`` and ``force`` are left out when they are those of the last step, and
        the per-sample scores go to ``score`` where given (a row of the call's statistics), else to the buffer."""
        if self._inputs != (eps, force):
            self.set_inputs(eps, force)
        b = self._buffers  # the buffers and ops without nn.Module's attribute lookup or wrappers (host cost per step)
        _DECIDE(x, t, jx_now, jt_now, b["eps"], b["force"], b["x_ref"], b["t_ref"], b["jx_ref"], b["jt_ref"],
                b["skips"], b["flag"], b["score"] if score is None else score, b["ticket"], max_skips)
        flag = self.read_flag()
        if flag & COMPUTE:
            b["x_ref"].copy_(x)
        return flag

    def read_flag(self) -> int:
        """Read the decision flag on the host: the single synchronisation of an eager step."""
        flag = self._buffers["flag"]
        if not flag.is_cuda:
            return flag.item()  # an int (the buffer is int32); cheaper than int(flag)
        self._host_flag.copy_(flag, non_blocking=True)
        torch.cuda.current_stream(flag.device).synchronize()
        return int(self._host_flag)
