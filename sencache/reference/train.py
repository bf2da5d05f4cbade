"""Train the reference model: ``python -m sencache.reference.train [--out DIR] [--steps N] [--device cuda]``.

Rectified flow matching on the procedural dataset: ``x_s = (1 - s) x0 + s n`` with ``s ~ sigmoid(N(0, 1))`` moved
to high noise by the sampler's shift (a quarter of the draws are uniform instead). The transformer predicts
``n - x0`` at timestep ``1000 s`` (the convention of diffusers' flow-matching schedulers), and 10% of the conditions
are replaced by the null sequence so that classifier-free guidance works. AdamW with warm-up and cosine decay; the
checkpoint holds an exponential moving average of the weights.

The output directory receives the checkpoint (``config.json`` + ``diffusion_pytorch_model.safetensors``), the
training record (``train.json``: configuration, seeds, versions, device, wall time), the loss curve (``loss.csv``,
``loss.png``), a sample grid of held-out seeds (``samples.png``, ``samples.gif``), a SenCache sensitivity profile
calibrated on the checkpoint (``sencache_profile.safetensors``, used by ``make demo``) and the judge's verdict on 48
samples (``judged.json``, :mod:`sencache.reference.judge`).

The default recipe (5000 steps of 32 clips) is the one of the shipped checkpoint: 6.6 minutes on an H100. A CPU is
far too slow for it (the 2-core dev machine: about 25 s per step, some 35 hours); ``--steps`` and ``--batch`` trade
quality for time there, and ``judged.json`` says how much was lost. The batches and noise are fixed by the seeds,
so the same command on the same machine type gives the same training run, up to the GPU's non-deterministic
kernels (atomics in backward passes).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import platform
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sencache.plotting import missing_matplotlib
from sencache.records import run_stamp
from sencache.reference.data import CONDITIONS, condition_embedding, pack, sample_clips
from sencache.reference.judge import SAMPLES as JUDGE_SAMPLES
from sencache.reference.judge import write_judged
from sencache.reference.model import CHECKPOINT_DIR, DEFAULTS, MODEL_CONFIG, SCHEDULER_SHIFT, build_transformer

DATA_SEED = 0
TRAIN = {"steps": 5000, "batch": 32, "lr": 6e-4, "warmup": 100, "weight_decay": 0.01, "ema": 0.999,
         "cond_dropout": 0.1, "grad_clip": 1.0, "seed": 0, "data_seed": DATA_SEED}
# Conditions shown in the sample grid: every colour, shape and motion at least once.
GRID_CONDITIONS = ("red circle left-right", "green square up-down", "blue triangle rotate", "yellow circle grow",
                   "red square rotate", "green triangle left-right", "blue circle up-down", "yellow square grow",
                   "red triangle grow", "green circle rotate", "blue square left-right", "yellow triangle up-down")
GRID_SEED = 10_000  # sampler noise seeds for the grid start here (held out from everything else)
PROFILE_SEED, PROFILE_SAMPLES = 50_000, 8  # the shipped SenCache profile: 8 calibration runs (the paper's choice)


def _lr(step: int, cfg: dict) -> float:
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    progress = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _one_thread() -> None:
    torch.set_num_threads(1)


def _batches(cfg: dict, workers: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """The training batches in order. With ``workers > 0`` they are rendered ahead in that many processes (a GPU
    step is faster than rendering its clips on one core); each batch depends only on its step, so the stream is the
    same either way."""
    args = [(cfg["batch"], cfg["data_seed"], step * cfg["batch"]) for step in range(cfg["steps"])]
    if workers <= 0:
        yield from (sample_clips(*a) for a in args)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        pending: deque = deque()
        for step in range(cfg["steps"]):
            while len(pending) < 4 * workers and step + len(pending) < cfg["steps"]:
                pending.append(pool.submit(sample_clips, *args[step + len(pending)]))
            yield pending.popleft().result()


def train(out: Path, steps: int | None = None, batch: int | None = None, lr: float | None = None, device: str = "cpu",
          log_every: int = 10, sample_steps: int = DEFAULTS["num_inference_steps"], data_workers: int = 0,
          judge_samples: int = JUDGE_SAMPLES, profile_samples: int = PROFILE_SAMPLES) -> dict:
    """Train, write the checkpoint and its record into ``out``; return the record.

    Args:
        out: output directory (created).
        steps: optimizer steps (default ``TRAIN["steps"]``).
        batch: clips per step (default ``TRAIN["batch"]``).
        lr: peak learning rate (default ``TRAIN["lr"]``).
        device: where to train (the data is generated on the CPU).
        log_every: loss logging interval in steps.
        sample_steps: sampler steps of the sample grid.
        data_workers: processes rendering the clips ahead of the training loop (0: in the loop; the batches are
            the same either way).
        judge_samples: samples that the judge classifies into ``judged.json`` (0: none).
        profile_samples: calibration runs of the SenCache profile (``sencache_profile.safetensors``).
    """
    cfg = dict(TRAIN, **{k: v for k, v in (("steps", steps), ("batch", batch), ("lr", lr)) if v is not None})
    torch.manual_seed(cfg["seed"])
    model = build_transformer(cfg["seed"]).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=cfg["weight_decay"])
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls, as the shipped checkpoint was trained
    # noise is drawn where the model trains (a CPU draw of a GPU batch takes longer than the GPU step)
    noise_gen = torch.Generator(device=device).manual_seed(cfg["seed"] + 1)
    logged: list[tuple[int, torch.Tensor]] = []
    start = time.perf_counter()
    batches = _batches(cfg, data_workers)
    for step in tqdm(range(cfg["steps"]), desc="train reference model", mininterval=5):
        clips, prompts = next(batches)
        x0 = pack(clips).to(device)
        cond = condition_embedding(prompts).to(device)
        n = cfg["batch"]
        keep = torch.rand(n, generator=noise_gen, device=device) >= cfg["cond_dropout"]
        cond = cond * keep.view(-1, 1, 1)  # dropped conditions become the null sequence (a mask, no host sync)
        # noise levels: logit-normal, with a quarter drawn uniformly so that the nearly pure noise where sampling
        # starts (and commits to position and colour) is trained too
        s = torch.sigmoid(torch.randn(n, generator=noise_gen, device=device))
        s = SCHEDULER_SHIFT * s / (1 + (SCHEDULER_SHIFT - 1) * s)  # the sampler's timestep shift: where it spends steps
        uniform = torch.rand(n, generator=noise_gen, device=device)
        s = torch.where(torch.rand(n, generator=noise_gen, device=device) < 0.25, uniform, s)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        sv = s.view(-1, 1, 1, 1, 1)
        xs = (1 - sv) * x0 + sv * noise
        target = noise - x0
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        pred = model(xs, s * 1000, cond, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - cfg["ema"])
        if step % log_every == 0 or step == cfg["steps"] - 1:
            logged.append((step, loss.detach()))  # read after the loop: no host sync inside it
    batches.close()  # stops the workers
    losses = [(s_, float(v)) for s_, v in logged]
    wall = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    ema.eval().save_pretrained(out)
    tail = [v for s_, v in losses if s_ >= cfg["steps"] - 100]
    record = {
        "final_loss_mean_last_100": sum(tail) / max(1, len(tail)),
        "command": "python -m sencache.reference.train " + f"--out {out} --steps {cfg['steps']} --batch {cfg['batch']}"
                   f" --lr {cfg['lr']} --device {device}",
        "train": cfg, "model": {k: list(v) if isinstance(v, tuple) else v for k, v in MODEL_CONFIG.items()},
        "parameters": sum(p.numel() for p in ema.parameters()), "sampling_defaults": DEFAULTS,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "data_workers": data_workers, "wall_s": round(wall, 1),
        **run_stamp(),  # versions, date
    }
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "loss.csv").write_text("step,loss\n" + "".join(f"{s_},{v:.6f}\n" for s_, v in losses))
    _plot_loss(out / "loss.png", losses)
    write_samples(out, device=device, steps=sample_steps)
    write_profile(out, device=device, steps=sample_steps, samples=profile_samples)
    if judge_samples:
        write_judged(out, judge_samples, device=device, steps=sample_steps)
    return record


def _plot_loss(path: Path, losses: list[tuple[int, float]]) -> None:
    from sencache.plotting import pyplot

    plt = pyplot()

    steps, values = zip(*losses, strict=True)
    k = 10
    smooth = [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, lw=0.6, alpha=0.5, label="loss")
    ax.plot(steps, smooth, lw=1.5, label=f"mean of {k} logged points")
    ax.set(xlabel="step", ylabel="flow-matching MSE", yscale="log", title="reference model training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_samples(out: Path, device: str = "cpu", steps: int = DEFAULTS["num_inference_steps"]) -> None:
    """Sample :data:`GRID_CONDITIONS` from the checkpoint in ``out``; write ``samples.png`` (every 4th frame in a
    row per condition) and ``samples.gif`` (all clips animated, 4 x 3)."""
    from PIL import Image, ImageDraw

    from sencache.reference.model import load_reference_pipeline

    pipe = load_reference_pipeline(out, device=device)
    videos = []
    for i, cond in enumerate(GRID_CONDITIONS):
        gen = torch.Generator(device="cpu").manual_seed(GRID_SEED + i)
        frames = pipe(cond, generator=gen, num_inference_steps=steps, output_type="pt").frames
        videos.append(frames[0].cpu())  # [F, 3, H, W]
    scale, label_w = 3, 150
    rows = []
    for v in videos:
        strip = torch.cat(list(v[::4]), dim=-1)
        rows.append(torch.nn.functional.interpolate(strip[None], scale_factor=scale, mode="nearest")[0])
    grid = (torch.cat(rows, dim=-2).permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    img = Image.new("RGB", (grid.shape[1] + label_w, grid.shape[0]), "white")
    img.paste(Image.fromarray(grid), (label_w, 0))
    draw = ImageDraw.Draw(img)
    row_h = grid.shape[0] // len(GRID_CONDITIONS)
    for r, cond in enumerate(GRID_CONDITIONS):
        draw.text((4, r * row_h + row_h // 2 - 6), cond, fill="black")
    img.save(out / "samples.png")
    tiles = torch.stack(videos)  # [12, F, 3, H, W]
    cols = 4
    rows_t = [torch.cat(list(tiles[r * cols:(r + 1) * cols]), dim=-1) for r in range(len(videos) // cols)]
    anim = torch.cat(rows_t, dim=-2)  # [F, 3, H*rows, W*cols]
    anim = torch.nn.functional.interpolate(anim, scale_factor=scale, mode="nearest")
    frames = [Image.fromarray((f.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()) for f in anim]
    frames[0].save(out / "samples.gif", save_all=True, append_images=frames[1:], duration=120, loop=0)


def write_profile(out: Path, device: str = "cpu", steps: int = DEFAULTS["num_inference_steps"],
                  samples: int = PROFILE_SAMPLES) -> Path:
    """Calibrate SenCache on the checkpoint in ``out`` and save ``sencache_profile.safetensors`` next to it."""
    import sencache
    from sencache.reference.model import load_reference_pipeline

    pipe = load_reference_pipeline(out, device=device)
    conditions = [CONDITIONS[(5 * i) % len(CONDITIONS)] for i in range(samples)]
    profile = sencache.calibrate(pipe, prompts=conditions, num_samples=samples,
                                 seeds=range(PROFILE_SEED, PROFILE_SEED + samples), num_inference_steps=steps)
    path = out / "sencache_profile.safetensors"
    profile.save(str(path))
    return path


def main(argv: list[str] | None = None, prog: str = "python -m sencache.reference.train") -> None:
    """Command-line entry (``sencache train-reference`` passes its own ``prog``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR, help="output directory (default: the shipped "
                        "checkpoint, overwritten)")
    parser.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {TRAIN['steps']})")
    parser.add_argument("--batch", type=int, default=None, help=f"clips per step (default {TRAIN['batch']})")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {TRAIN['lr']})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-workers", type=int, default=None, help="processes rendering clips ahead (default: "
                        "up to 8 on a GPU, none on the CPU, where the training step needs every core)")
    parser.add_argument("--artifacts-only", action="store_true",
                        help="keep the checkpoint in --out; only redraw its sample grid, recalibrate its profile "
                        "and judge its samples")
    args = parser.parse_args(argv)
    if (missing := missing_matplotlib(prog)) is not None:
        parser.error(missing)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.artifacts_only:
        write_samples(args.out, device=args.device)
        write_judged(args.out, device=args.device)
        print(f"wrote {write_profile(args.out, device=args.device)}, the sample grid and judged.json")
        return
    workers = args.data_workers
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) - 1) if args.device.startswith("cuda") else 0
    record = train(args.out, steps=args.steps, batch=args.batch, lr=args.lr, device=args.device, data_workers=workers)
    judged = json.loads((args.out / "judged.json").read_text())["samples"]
    print(f"wrote {args.out}: {record['parameters'] / 1e6:.2f}M parameters, {record['wall_s']:.0f} s, "
          f"final loss {record['final_loss_mean_last_100']:.4f}; conditions: {len(CONDITIONS)}; samples judged: "
          + ", ".join(f"{k} {v:.0%}" for k, v in judged.items()))


if __name__ == "__main__":
    main()
