"""The models of ``benchmarks/e2e.py``: real-size video DiT configurations with random weights (and toy sizes of the
same families for ``--smoke``), their inputs, the denoising loop, and the uncached calls (plain, or replayed as CUDA
graphs).

Every method of the benchmark runs on its own **twin** of the transformer: new module objects that share the
parameters and buffers (no weight memory of their own), so that each method keeps its hooks, compiled blocks and
captured graphs across the alternating rounds instead of being applied again before each loop.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel, LTXVideoTransformer3DModel, WanTransformer3DModel

Call = Callable[[dict[str, Any], str], torch.Tensor]  # (transformer keyword arguments, context) -> output

# name -> transformer class, configuration, latent shape, text length and width, how CFG is run
MODELS: dict[str, dict[str, Any]] = {
    "wan2.1-1.3b 480p 81f": {
        "cls": WanTransformer3DModel, "cfg": "two calls", "latent": (1, 16, 21, 60, 104), "text": (512, 4096),
        "config": {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
                   "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
                   "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                   "rope_max_seq_len": 1024},
    },
    "cogvideox-2b 480x720 49f": {
        "cls": CogVideoXTransformer3DModel, "cfg": "batched", "latent": (1, 13, 16, 60, 90), "text": (226, 4096),
        "config": {"num_attention_heads": 30, "attention_head_dim": 64, "in_channels": 16, "out_channels": 16,
                   "time_embed_dim": 512, "text_embed_dim": 4096, "num_layers": 30, "sample_width": 90,
                   "sample_height": 60, "sample_frames": 49, "patch_size": 2, "temporal_compression_ratio": 4,
                   "max_text_seq_length": 226, "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu",
                   "norm_elementwise_affine": True, "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875,
                   "temporal_interpolation_scale": 1.0, "use_rotary_positional_embeddings": False},
    },
    "ltx-video 768x512 121f": {
        "cls": LTXVideoTransformer3DModel, "cfg": "batched", "latent": (1, 128, 16, 16, 24), "text": (128, 4096),
        "config": {"in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
                   "num_attention_heads": 32, "attention_head_dim": 64, "cross_attention_dim": 2048,
                   "num_layers": 28, "activation_fn": "gelu-approximate", "qk_norm": "rms_norm_across_heads",
                   "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 4096,
                   "attention_bias": True, "attention_out_bias": True},
    },
}
# The same families at toy sizes, for --smoke on the CPU (and on a GPU with --smoke --device cuda).
SMOKE_MODELS: dict[str, dict[str, Any]] = {
    "wan tiny": {**MODELS["wan2.1-1.3b 480p 81f"], "latent": (1, 16, 2, 8, 8), "text": (8, 32),
                 "config": {**MODELS["wan2.1-1.3b 480p 81f"]["config"], "num_attention_heads": 2,
                            "attention_head_dim": 12, "text_dim": 32, "freq_dim": 16, "ffn_dim": 32, "num_layers": 2,
                            "rope_max_seq_len": 32}},
    "cogvideox tiny": {**MODELS["cogvideox-2b 480x720 49f"], "latent": (1, 2, 4, 8, 8), "text": (8, 16),
                       "config": {**MODELS["cogvideox-2b 480x720 49f"]["config"], "num_attention_heads": 2,
                                  "attention_head_dim": 8, "in_channels": 4, "out_channels": 4, "time_embed_dim": 8,
                                  "text_embed_dim": 16, "num_layers": 2, "sample_width": 8, "sample_height": 8,
                                  "sample_frames": 5, "max_text_seq_length": 8}},
    "ltx tiny": {**MODELS["ltx-video 768x512 121f"], "latent": (1, 8, 2, 4, 4), "text": (8, 16),
                 "config": {**MODELS["ltx-video 768x512 121f"]["config"], "in_channels": 8, "out_channels": 8,
                            "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16,
                            "num_layers": 2, "caption_channels": 16}},
}


class Model:
    """One transformer with its inputs, and its step as its pipeline runs it (``contexts`` calls per step)."""

    def __init__(self, name: str, spec: dict[str, Any], device: str, dtype: torch.dtype) -> None:
        self.name, self.spec = name, spec
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs (a CPU init of 2B parameters takes a minute)
            self.transformer = spec["cls"](**spec["config"]).to(dtype).eval().requires_grad_(False)
        g = torch.Generator().manual_seed(1)
        self.latents = torch.randn(spec["latent"], generator=g).to(device, dtype)
        seq, width = spec["text"]
        self.cond, self.uncond = (torch.randn(1, seq, width, generator=g).to(device, dtype) for _ in range(2))
        self.contexts = ("cond", "uncond") if spec["cfg"] == "two calls" else ("cond_uncond",)

    def twin(self) -> torch.nn.Module:
        """A copy of the transformer that shares its parameters and buffers (module objects of its own to hook,
        compile or capture; no weight memory of its own)."""
        tr = self.transformer
        shared = {id(t): t for t in itertools.chain(tr.parameters(), tr.buffers())}
        return copy.deepcopy(tr, shared)

    def kwargs(self, latents: torch.Tensor, t: torch.Tensor, context: str) -> dict[str, Any]:
        """The transformer's keyword arguments for one call of ``context``."""
        cls = self.spec["cls"]
        if context != "cond_uncond":
            text = self.cond if context == "cond" else self.uncond
            return {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text, "return_dict": False}
        text = torch.cat([self.uncond, self.cond])
        if cls is CogVideoXTransformer3DModel:
            return {"hidden_states": torch.cat([latents, latents]), "timestep": t.expand(2),
                    "encoder_hidden_states": text, "return_dict": False}
        _, c, f, h, w = latents.shape  # LTX takes packed tokens [B, F*H*W, C]
        packed = latents.permute(0, 2, 3, 4, 1).reshape(1, f * h * w, c)
        return {"hidden_states": torch.cat([packed, packed]), "timestep": t.expand(2), "encoder_hidden_states": text,
                "encoder_attention_mask": torch.ones(2, text.shape[1], dtype=torch.bool, device=text.device),
                "num_frames": f, "height": h, "width": w, "return_dict": False}

    def combine(self, outputs: list[torch.Tensor], guidance: float = 5.0) -> torch.Tensor:
        """The guided velocity, shaped like the latents."""
        if len(outputs) == 2:
            cond, uncond = outputs
        else:
            uncond, cond = outputs[0].chunk(2)
        v = uncond + guidance * (cond - uncond)
        return v.reshape(self.latents.shape[0], *self.latents.shape[2:], -1).permute(0, 4, 1, 2, 3) \
            if self.spec["cls"] is LTXVideoTransformer3DModel else v


def denoise(model: Model, tr: torch.nn.Module, call: Call, steps: int) -> torch.Tensor:
    """The denoising loop with ``call(kwargs, context)`` standing for the transformer ``tr``; no host sync of its
    own."""
    sigmas = [1.0 - i / steps for i in range(steps + 1)]
    timesteps = [torch.full((1,), 1000.0 * s, device=model.latents.device) for s in sigmas[:-1]]
    latents = model.latents
    for i in range(steps):
        outputs = []
        for context in model.contexts:
            with tr.cache_context(context):
                outputs.append(call(model.kwargs(latents, timesteps[i], context), context))
        latents = latents + (sigmas[i + 1] - sigmas[i]) * model.combine(outputs)
    return latents


def plain_call(tr: torch.nn.Module) -> Call:
    return lambda kwargs, context: tr(**kwargs)[0]


def graphed_call(tr: torch.nn.Module) -> Call:
    """The uncached transformer replayed as one CUDA graph per context (captured on first use): the baseline of
    graph mode."""
    graphs: dict[str, tuple] = {}

    def call(kwargs: dict[str, Any], context: str) -> torch.Tensor:
        if context not in graphs:
            static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                tr(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = tr(**static)[0]
            graphs[context] = (graph, static, out)
        graph, static, out = graphs[context]
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                static[k].copy_(v)
        graph.replay()
        return out.clone()

    return call
