"""Helpers shared by the test modules (no test module imports another; fixtures live in conftest.py)."""

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

STEPS = 10  # denoising steps of the pipeline tests


def run(pipe, arch, **kw):
    """The frames of one call of a tiny pipeline (``STEPS`` steps unless given)."""
    from sencache import offline_pipelines

    kw.setdefault("num_inference_steps", STEPS)
    return pipe(**offline_pipelines.call_kwargs(arch, pipe, **kw)).frames


def calibration_kwargs(arch, pipe, steps):
    """A tiny pipeline's call arguments for ``calibrate`` (it sets the generator, step count and output itself)."""
    from sencache import offline_pipelines

    kw = offline_pipelines.call_kwargs(arch, pipe, num_inference_steps=steps)
    for k in ("generator", "num_inference_steps", "output_type"):
        kw.pop(k)
    return kw


def trajectory(pipe, arch, seed, steps):
    """One pipeline call's leading (deciding) call of every step, as (transformer, its keyword inputs), the final
    latent, and the transformer calls per step."""
    from sencache import plumbing

    calls, finals, handles = [], [], []
    for tr in plumbing.transformers(pipe):
        handles.append(tr.register_forward_pre_hook(
            lambda m, a, kw: calls.append((m, {k: v.clone() if isinstance(v, torch.Tensor) else v
                                               for k, v in kw.items()})), with_kwargs=True))

    def on_end(_pipe, i, _t, tensors):
        finals.append(tensors["latents"].clone())
        return {}

    try:
        pipe(**calibration_kwargs(arch, pipe, steps), num_inference_steps=steps,
             generator=torch.Generator().manual_seed(seed), output_type="latent", callback_on_step_end=on_end)
    finally:
        for h in handles:
            h.remove()
    per_step = len(calls) // steps
    assert per_step * steps == len(calls)
    return calls[::per_step], finals[-1], per_step


def flat_profile(pipe, jx=0.0, jt=1e-2, timesteps=None):
    """A handcrafted profile: constant sensitivities over the whole timestep range."""
    import sencache

    ts = torch.linspace(1000, 0, 5) if timesteps is None else timesteps
    return sencache.SensitivityProfile(
        timesteps=ts, jx=torch.full_like(ts, jx), jt=torch.full_like(ts, jt),
        metadata={"transformer_class": type(pipe.transformer).__name__},
    )


# Where the kernels under test run: natively on CUDA when present, else the CPU (Triton through the interpreter).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_args(x, gen, eps=0.05, force=False, max_skips=2):
    """Arguments of ``sencache::decide`` (a dict in schema order) for latent ``x``, with a random state on the CPU."""
    b = x.shape[0]
    return dict(
        x=x,
        t=torch.full((b,), 900.0),
        jx_now=torch.rand(b, generator=gen) + 0.5,
        jt_now=torch.rand(b, generator=gen) * 1e-2,
        eps=torch.tensor(eps),
        force=torch.tensor(force),
        x_ref=torch.randn(x.shape, generator=gen).to(x.dtype),
        t_ref=torch.full((b,), 950.0),
        jx_ref=torch.rand(b, generator=gen) + 0.5,
        jt_ref=torch.rand(b, generator=gen) * 1e-2,
        skips=torch.zeros((), dtype=torch.int32),
        flag=torch.zeros((), dtype=torch.int32),
        score=torch.zeros(b),
        ticket=torch.zeros((), dtype=torch.int32),
        max_skips=max_skips,
    )


# The state arguments of ``sencache::decide``: the tensors a decision updates or reads back (compared bit for bit).
DECIDE_STATE = ("x_ref", "t_ref", "jx_ref", "jt_ref", "skips", "flag", "score", "ticket")


def clone_args(args):
    """A copy of an argument dict in which every tensor is cloned (other values shared)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def error_of(op, args):
    """``"ValueError: message"`` raised by ``torch.ops.sencache.<op>(*args)``, or ``""`` when it returns."""
    try:
        getattr(torch.ops.sencache, op)(*args)
    except Exception as e:  # noqa: BLE001 - the type is part of what is compared
        return f"{type(e).__name__}: {e}"
    return ""


def run_without_extension(code, inputs=None):
    """Run ``code`` in a fresh interpreter with ``SENCACHE_DISABLE_EXTENSION=1`` (the pure-Python fallback ops; only one
    ``TORCH_LIBRARY(sencache)`` may be loaded per process) and return what it assigns to ``result``.

    ``inputs`` (anything ``torch.save`` takes) is visible to the code as ``inputs``; ``result`` comes back the same way.
    The code runs in the repository root with ``torch``, ``sencache_kernels as sk`` and ``tests.helpers`` imported.
    """
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "inputs.pt", Path(tmp) / "result.pt"
        torch.save(inputs, src)
        script = (
            "import torch, sencache_kernels as sk\n"
            "from tests import helpers\n"
            "assert not sk.HAS_EXTENSION\n"
            f"inputs = torch.load({str(src)!r}, weights_only=False)\n"
            + code
            + f"\ntorch.save(result, {str(dst)!r})\n"
        )
        env = {**os.environ, "SENCACHE_DISABLE_EXTENSION": "1"}
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
        return torch.load(dst, weights_only=False)


def assert_same_errors_as_fallback(op, cases):
    """Each case (an argument tuple of ``sencache::<op>``) raises a ValueError here, with the extension, and the
    pure-Python fallback raises the identical message for it (both interpret ``sencache_kernels/ops.def``)."""
    import sencache_kernels as sk

    if not sk.HAS_EXTENSION:
        pytest.skip("compiled extension not built: nothing to compare the fallback with")
    here = [error_of(op, args) for args in cases]
    assert all(m.startswith("ValueError: sencache::") for m in here), here
    there = run_without_extension(f"result = [helpers.error_of({op!r}, a) for a in inputs]", cases)
    for case, (a, b) in enumerate(zip(here, there, strict=True)):
        assert a == b, f"case {case}:\n  extension: {a}\n  fallback:  {b}"


def cp_pipeline(arch):
    """A tiny pipeline for context parallelism on the CPU: LTX-Video's transformer is called without its text mask,
    which diffusers' Ulysses attention fails on there (the tiny pipeline's is all ones, so outputs do not change)."""
    from sencache import offline_pipelines

    pipe = offline_pipelines.build_pipeline(arch)
    if arch == "ltx":
        pipe.transformer.register_forward_pre_hook(
            lambda module, args, kwargs: (args, {**kwargs, "encoder_attention_mask": None}), with_kwargs=True)
    return pipe


def _flash_for_cpu(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal,
                                                                         attn_mask=attn_mask, scale=scale)
    out, lse = out.transpose(1, 2).contiguous(), lse.transpose(1, 2).contiguous()
    return (out, lse) if return_lse else out


@contextlib.contextmanager
def cp_attention(name):
    """diffusers' native attention under context parallelism on the CPU: for ``name="ring"``, its op replaced by one
    that returns the log-sum-exp (``aten::_scaled_dot_product_flash_attention_for_cpu``), which ring attention needs."""
    from diffusers.models import attention_dispatch

    original = attention_dispatch._native_attention_forward_op
    if name == "ring":
        attention_dispatch._native_attention_forward_op = _flash_for_cpu
    try:
        yield
    finally:
        attention_dispatch._native_attention_forward_op = original
