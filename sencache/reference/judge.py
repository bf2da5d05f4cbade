"""Does a sample show its condition? A small classifier of colour, shape and motion, trained on the procedural clips.

``python -m sencache.reference.judge [--train] [--checkpoint DIR] [--samples N]``: with ``--train``, trains the judge
on clips of its own data seed (held out from the reference model's) and saves ``judge.safetensors``. Then it samples
the reference checkpoint on ``N`` held-out (condition, seed) pairs, classifies every sample, and writes
``judged.json`` next to the checkpoint: the accuracy per attribute on real held-out clips (what the judge can do)
and on the samples (what the model shows). A sample counts for an attribute when the judge's most likely class is
the conditioned one.

The judge sees clips with added noise and blur during training, so that the softer look of generated clips is not
by itself a reason to misjudge them. It is a measure, not ground truth: a sample the judge gets wrong may still look
right to a person, which is why the sample grid is committed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from sencache.reference.data import COLOURS, CONDITIONS, MOTIONS, SHAPES, parse_condition, sample_clips

__all__ = ["ATTRIBUTES", "Judge", "accuracy", "load_judge", "train_judge"]

ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": MOTIONS}
JUDGE_DATA_SEED = 1  # the reference model trains on seed 0
JUDGE_TRAIN = {"steps": 1500, "batch": 32, "lr": 2e-3, "seed": 0}
EVAL_SEED = 2  # held-out real clips that measure the judge itself
SAMPLE_SEED = 70_000  # sampler noise seeds of the judged samples (held out from training, grid and profile seeds)
SAMPLES = len(CONDITIONS)  # judged samples: one per condition
JUDGE_FILE = "judge.safetensors"


class Judge(nn.Module):
    """Three strided 3D convolutions and one linear layer per attribute; input ``[B, 3, F, 32, 32]`` in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 32, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv3d(64, 96, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(96, len(classes)) for name, classes in ATTRIBUTES.items()})

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute."""
        h = self.features(clips)
        return {name: head(h) for name, head in self.heads.items()}


def _labels(prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    parsed = [parse_condition(p) for p in prompts]
    return {name: torch.tensor([classes.index(words[i]) for words in parsed])
            for i, (name, classes) in enumerate(ATTRIBUTES.items())}


def _degrade(clips: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur and noise per clip, the softness of generated samples."""
    b = clips.shape[0]
    blur = torch.nn.functional.avg_pool3d(clips, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    mix = torch.rand(b, 1, 1, 1, 1, generator=g)
    noise = torch.randn(clips.shape, generator=g) * 0.15 * torch.rand(b, 1, 1, 1, 1, generator=g)
    return (clips + mix * (blur - clips) + noise).clamp(-1, 1)


def train_judge(steps: int = JUDGE_TRAIN["steps"], batch: int = JUDGE_TRAIN["batch"]) -> Judge:
    """A judge trained on the CPU (a few minutes) from clips of :data:`JUDGE_DATA_SEED`."""
    torch.manual_seed(JUDGE_TRAIN["seed"])
    judge = Judge().train()
    opt = torch.optim.AdamW(judge.parameters(), lr=JUDGE_TRAIN["lr"], weight_decay=0.01)
    g = torch.Generator().manual_seed(JUDGE_TRAIN["seed"] + 1)
    for step in tqdm(range(steps), desc="train judge", mininterval=5):
        clips, prompts = sample_clips(batch, JUDGE_DATA_SEED, step * batch)
        for group in opt.param_groups:
            group["lr"] = JUDGE_TRAIN["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits = judge(_degrade(clips, g))
        loss = sum(nn.functional.cross_entropy(logits[k], v) for k, v in _labels(prompts).items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


@torch.no_grad()
def accuracy(judge: Judge, clips: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Fraction of ``clips`` (``[B, 3, F, H, W]`` in [-1, 1]) whose judged colour, shape and motion match
    ``prompts``, per attribute and for all three at once (``"all"``)."""
    if clips.ndim != 5 or clips.shape[0] != len(prompts):
        raise ValueError(f"accuracy needs [B, 3, F, H, W] clips and B prompts, got {tuple(clips.shape)} and "
                         f"{len(prompts)} prompts")
    logits = judge(clips.float())
    hits = {k: logits[k].argmax(-1) == v for k, v in _labels(prompts).items()}
    result = {k: float(h.float().mean()) for k, h in hits.items()}
    result["all"] = float(torch.stack(list(hits.values())).all(0).float().mean())
    return result


def load_judge(checkpoint: str | Path) -> Judge:
    """The judge saved next to a reference checkpoint."""
    path = Path(checkpoint) / JUDGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no judge in {path.parent}; train one with `python -m sencache.reference.judge "
                                f"--train --checkpoint {path.parent}`")
    judge = Judge()
    judge.load_state_dict(load_file(path), strict=True)
    return judge.eval()


def judge_checkpoint(checkpoint: Path, samples: int, device: str = "cpu", steps: int | None = None,
                     judge_dir: Path | None = None) -> dict:
    """Sample the reference model in ``checkpoint`` on ``samples`` held-out pairs and judge them (plus real clips).

    Args:
        steps: sampler steps (default: the pipeline's 50).
        judge_dir: where the judge is saved (default: ``checkpoint``).
    """
    from sencache.reference.model import DEFAULTS, load_reference_pipeline

    steps = steps or DEFAULTS["num_inference_steps"]
    judge = load_judge(judge_dir or checkpoint)
    real, real_prompts = sample_clips(4 * len(CONDITIONS), EVAL_SEED, 0)
    pipe = load_reference_pipeline(checkpoint, device=device)
    prompts = [CONDITIONS[i % len(CONDITIONS)] for i in range(samples)]
    videos = []
    for i, prompt in enumerate(tqdm(prompts, desc="sample and judge")):
        gen = torch.Generator(device="cpu").manual_seed(SAMPLE_SEED + i)
        frames = pipe(prompt, generator=gen, num_inference_steps=steps, output_type="pt").frames[0].cpu()
        videos.append(frames.permute(1, 0, 2, 3) * 2 - 1)  # [F, 3, H, W] in [0, 1] -> [3, F, H, W] in [-1, 1]
    return {"real_clips": accuracy(judge, real, real_prompts), "samples": accuracy(judge, torch.stack(videos), prompts),
            "num_real": len(real_prompts), "num_samples": samples, "sample_seed": SAMPLE_SEED, "sampler_steps": steps,
            "judge_train": JUDGE_TRAIN, "date": time.strftime("%Y-%m-%d")}


def write_judged(checkpoint: Path, samples: int = SAMPLES, device: str = "cpu", steps: int | None = None) -> dict:
    """:func:`judge_checkpoint` with the judge saved in ``checkpoint`` (else the shipped one); writes and returns
    ``judged.json`` there."""
    from sencache.reference.model import CHECKPOINT_DIR

    judge_dir = checkpoint if (checkpoint / JUDGE_FILE).is_file() else CHECKPOINT_DIR
    record = judge_checkpoint(checkpoint, samples, device=device, steps=steps, judge_dir=judge_dir)
    (checkpoint / "judged.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    from sencache.reference.model import CHECKPOINT_DIR

    parser = argparse.ArgumentParser(prog="python -m sencache.reference.judge", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT_DIR, help="reference checkpoint directory")
    parser.add_argument("--train", action="store_true", help=f"train the judge and save {JUDGE_FILE} there first")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="samples to judge (conditions in turn)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.train:
        judge = train_judge()
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(args.checkpoint / JUDGE_FILE))
    record = write_judged(args.checkpoint, args.samples, args.device)
    for name in ("real_clips", "samples"):
        print(f"{name}: " + ", ".join(f"{k} {v:.0%}" for k, v in record[name].items()))


if __name__ == "__main__":
    main()
