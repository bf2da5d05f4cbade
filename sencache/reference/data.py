"""Procedural video dataset of the reference model: coloured shapes that move, rotate or grow over textures.

A condition is three words, ``"<colour> <shape> <motion>"`` (e.g. ``"red circle left-right"``): 4 colours x 3 shapes
x 4 motions = 48 conditions. A clip is ``FRAMES`` frames of ``SIZE x SIZE`` RGB in [-1, 1], ``[3, FRAMES, SIZE,
SIZE]``. Clip ``i`` of seed ``s`` depends only on ``(s, i)``, so the dataset is an indexable, deterministic function
(the tests check it).

The model works on a latent equivalent with Wan's temporal layout: :func:`pack` folds the 17 frames into 5 latent
frames of 12 channels (the first frame alone, then groups of 4 consecutive frames, as Wan's causal VAE compresses
time by 4), an exact, fixed rearrangement that :func:`unpack` inverts. It cuts the transformer's tokens by 3.4
(1280 instead of 4352 per clip at the model's 2x2 patches).

Prompts become ``encoder_hidden_states`` through a fixed (not learned) random embedding per word; the unconditional
input of classifier-free guidance is the all-zero sequence of the same length (:func:`null_embedding`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "COLOURS",
    "CONDITIONS",
    "FRAMES",
    "MOTIONS",
    "SHAPES",
    "SIZE",
    "TEXT_DIM",
    "LATENT_CHANNELS",
    "condition_embedding",
    "null_embedding",
    "pack",
    "parse_condition",
    "render_clip",
    "sample_clips",
    "unpack",
]

FRAMES = 17  # Wan pipelines take 4k+1 frames
SIZE = 32
TEXT_DIM = 32
TEMPORAL = 4  # frames per latent frame after the first (Wan's VAE factor)
LATENT_CHANNELS = 3 * TEMPORAL
# Source frame of each (latent frame, slot): the first latent frame repeats frame 0, then 1-4, 5-8, ...
_FRAME_OF = torch.tensor([[0] * TEMPORAL] + [[1 + TEMPORAL * k + j for j in range(TEMPORAL)]
                                              for k in range((FRAMES - 1) // TEMPORAL)])
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.12, 0.82, 0.22),
    "blue": (0.18, 0.32, 0.98),
    "yellow": (0.96, 0.86, 0.08),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left-right", "up-down", "grow", "rotate")
CONDITIONS: tuple[str, ...] = tuple(f"{c} {s} {m}" for c in COLOURS for s in SHAPES for m in MOTIONS)
_VOCAB: tuple[str, ...] = (*COLOURS, *SHAPES, *MOTIONS)
_EMBED_SEED = 20261122


def parse_condition(prompt: str) -> tuple[str, str, str]:
    """Split a prompt into ``(colour, shape, motion)``; the words may come in any order.

    Raises:
        ValueError: when the prompt does not name exactly one colour, one shape and one motion.
    """
    words = prompt.lower().split()
    picked = []
    for name, group in (("colour", tuple(COLOURS)), ("shape", SHAPES), ("motion", MOTIONS)):
        hits = [w for w in words if w in group]
        if len(hits) != 1:
            raise ValueError(f"prompt {prompt!r} must name exactly one {name} out of {', '.join(group)} "
                             f"(e.g. {CONDITIONS[0]!r})")
        picked.append(hits[0])
    unknown = [w for w in words if w not in _VOCAB]
    if unknown:
        raise ValueError(f"prompt {prompt!r} has unknown words {unknown}; the vocabulary is {', '.join(_VOCAB)}")
    return picked[0], picked[1], picked[2]


def _word_table() -> torch.Tensor:
    g = torch.Generator().manual_seed(_EMBED_SEED)
    return torch.randn(len(_VOCAB), TEXT_DIM, generator=g, dtype=torch.float64).float()


_TABLE = _word_table()


def condition_embedding(prompts: str | Sequence[str]) -> torch.Tensor:
    """``[B, 3, TEXT_DIM]`` embeddings (colour, shape, motion tokens) for one prompt or a list of prompts."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = [[_VOCAB.index(w) for w in parse_condition(p)] for p in prompts]
    return _TABLE[torch.tensor(ids, dtype=torch.long)]


def null_embedding(batch: int) -> torch.Tensor:
    """The unconditional input: zeros shaped like :func:`condition_embedding` of ``batch`` prompts."""
    return torch.zeros(batch, 3, TEXT_DIM)


def pack(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, FRAMES, H, W]`` -> the model's latent ``[B, 12, 5, H, W]`` (channel ``4 c + j`` of latent frame
    ``k`` is colour ``c`` of the ``j``-th frame folded into it)."""
    b, c, f, h, w = video.shape
    if c != 3 or f != FRAMES:
        raise ValueError(f"pack needs [B, 3, {FRAMES}, H, W] clips, got {tuple(video.shape)}")
    grouped = video[:, :, _FRAME_OF.to(video.device)]  # [B, 3, 5, 4, H, W]
    return grouped.transpose(2, 3).reshape(b, LATENT_CHANNELS, _FRAME_OF.shape[0], h, w)


def unpack(latent: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[B, 12, 5, H, W]`` -> ``[B, 3, FRAMES, H, W]`` (frame 0 is the mean of its
    copies, which for a packed clip are equal)."""
    b, c, k, h, w = latent.shape
    if c != LATENT_CHANNELS or k != _FRAME_OF.shape[0]:
        raise ValueError(f"unpack needs [B, {LATENT_CHANNELS}, {_FRAME_OF.shape[0]}, H, W] latents, "
                         f"got {tuple(latent.shape)}")
    grouped = latent.reshape(b, 3, TEMPORAL, k, h, w).transpose(2, 3)  # [B, 3, 5, 4, H, W]
    first = grouped[:, :, :1].mean(dim=3)
    return torch.cat([first, grouped[:, :, 1:].reshape(b, 3, FRAMES - 1, h, w)], dim=2)


def _texture(g: torch.Generator, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """A static background: a dim, low-saturation base colour with two soft stripe patterns, ``[3, SIZE, SIZE]``."""
    r = torch.rand(9, generator=g, dtype=torch.float64)
    base = 0.18 + 0.22 * r[0] + 0.06 * (r[1:4] - 0.5)
    tex = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    for k in range(2):
        angle, freq, phase = math.pi * r[4 + k], 0.25 + 0.45 * r[6 + k], 2 * math.pi * r[8] * (k + 1)
        tex += 0.04 * torch.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
    return (base.view(3, 1, 1) + tex).clamp(0, 1)


def _coverage(shape: str, cx: float, cy: float, radius: float, angle: float,
              yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of a circle or regular polygon with circumradius ``radius``."""
    qx, qy = xx - cx, yy - cy
    if shape == "circle":
        dist = torch.sqrt(qx * qx + qy * qy) - radius
    else:
        sides = 4 if shape == "square" else 3
        normals = [angle + 2 * math.pi * i / sides for i in range(sides)]
        inradius = radius * math.cos(math.pi / sides)
        dist = torch.stack([qx * math.cos(a) + qy * math.sin(a) for a in normals]).amax(0) - inradius
    return (0.5 - dist).clamp(0, 1)


def _bounce(start: float, velocity: float, frames: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Positions of a point moving at ``velocity`` per frame that reflects off ``lo`` and ``hi``."""
    span = hi - lo
    u = torch.remainder(start - lo + velocity * frames, 2 * span)
    return lo + torch.where(u > span, 2 * span - u, u)


def render_clip(condition: str, seed: int, index: int) -> torch.Tensor:
    """Clip ``index`` of the dataset with ``seed`` for ``condition``: ``[3, FRAMES, SIZE, SIZE]`` in [-1, 1]."""
    colour, shape, motion = parse_condition(condition)
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    r = torch.rand(8, generator=g, dtype=torch.float64).tolist()
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64) + 0.5,
                            torch.arange(SIZE, dtype=torch.float64) + 0.5, indexing="ij")
    background = _texture(g, yy, xx)
    frames = torch.arange(FRAMES, dtype=torch.float64)
    size = 6.0 + 2.5 * r[0]  # circumradius: every shape stays inside the frame
    margin = size + 1.0
    cx = torch.full((FRAMES,), margin + (SIZE - 2 * margin) * r[1], dtype=torch.float64)
    cy = torch.full((FRAMES,), margin + (SIZE - 2 * margin) * r[2], dtype=torch.float64)
    radius = torch.full((FRAMES,), size, dtype=torch.float64)
    angle = torch.full((FRAMES,), 2 * math.pi * r[3], dtype=torch.float64)
    sign = 1.0 if r[4] < 0.5 else -1.0
    if motion == "left-right":
        cx = _bounce(float(cx[0]), sign * (1.2 + 0.8 * r[5]), frames, margin, SIZE - margin)
    elif motion == "up-down":
        cy = _bounce(float(cy[0]), sign * (1.2 + 0.8 * r[5]), frames, margin, SIZE - margin)
    elif motion == "grow":
        cx.fill_(SIZE / 2 + 3 * (r[1] - 0.5))
        cy.fill_(SIZE / 2 + 3 * (r[2] - 0.5))
        radius = 2.5 + (min(1.6 * size, 11.0) - 2.5) * frames / (FRAMES - 1)
    else:  # rotate
        angle = angle + sign * (0.12 + 0.1 * r[5]) * frames
    rgb = torch.tensor(COLOURS[colour], dtype=torch.float64).view(3, 1, 1)
    out = torch.empty(3, FRAMES, SIZE, SIZE, dtype=torch.float64)
    for f in range(FRAMES):
        a = _coverage(shape, float(cx[f]), float(cy[f]), float(radius[f]), float(angle[f]), yy, xx)
        out[:, f] = background * (1 - a) + rgb * a
    return (out * 2 - 1).float()


def sample_clips(batch: int, seed: int, start: int) -> tuple[torch.Tensor, list[str]]:
    """Clips ``start .. start+batch-1`` of the dataset with ``seed``: ``([B, 3, F, S, S], prompts)``.

    The condition of clip ``i`` is drawn from ``(seed, i)`` as well, so any slice of the stream is reproducible.
    """
    prompts, clips = [], []
    for i in range(start, start + batch):
        g = torch.Generator().manual_seed(seed * 7_919 + i)
        cond = CONDITIONS[int(torch.randint(len(CONDITIONS), (1,), generator=g))]
        prompts.append(cond)
        clips.append(render_clip(cond, seed, i))
    return torch.stack(clips), prompts
