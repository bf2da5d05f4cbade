"""The reference model: deterministic procedural data, the shipped checkpoint and its pipeline, the training script."""

import json

import pytest
import torch

from sencache.reference import data
from sencache.reference.model import CHECKPOINT_DIR, load_reference_pipeline


def test_clips_are_deterministic_functions_of_seed_and_index():
    a = data.render_clip("green triangle rotate", seed=3, index=5)
    assert torch.equal(a, data.render_clip("green triangle rotate", seed=3, index=5))
    assert not torch.equal(a, data.render_clip("green triangle rotate", seed=3, index=6))
    assert not torch.equal(a, data.render_clip("green triangle rotate", seed=4, index=5))
    clips, prompts = data.sample_clips(4, seed=0, start=10)
    first, p1 = data.sample_clips(2, seed=0, start=10)
    second, p2 = data.sample_clips(2, seed=0, start=12)
    assert torch.equal(clips, torch.cat([first, second])) and prompts == p1 + p2
    assert clips.shape == (4, 3, data.FRAMES, data.SIZE, data.SIZE)
    assert clips.min() >= -1 and clips.max() <= 1


@pytest.mark.slow
def test_prefetched_batches_equal_the_in_loop_ones():
    from sencache.reference.train import _batches

    cfg = {"steps": 5, "batch": 2, "data_seed": 3}
    inline, ahead = list(_batches(cfg, 0)), list(_batches(cfg, 2))
    assert len(inline) == len(ahead) == 5
    for (a, pa), (b, pb) in zip(inline, ahead, strict=True):
        assert torch.equal(a, b) and pa == pb
    assert not torch.equal(inline[0][0], inline[1][0])


def test_pack_is_an_exact_rearrangement():
    clips, _ = data.sample_clips(3, seed=1, start=0)
    latent = data.pack(clips)
    assert latent.shape == (3, data.LATENT_CHANNELS, 5, data.SIZE, data.SIZE)
    assert torch.equal(data.unpack(latent), clips)
    # channel 4c + j of latent frame k holds colour c of frame 4(k-1) + 1 + j; latent frame 0 repeats frame 0
    assert torch.equal(latent[:, 4 * 2 + 3, 2], clips[:, 2, 8]) and torch.equal(latent[:, 4 * 1 + 2, 0], clips[:, 1, 0])
    with pytest.raises(ValueError, match="pack needs"):
        data.pack(clips[:, :, :16])
    with pytest.raises(ValueError, match="unpack needs"):
        data.unpack(latent[:, :11])


def _shape_track(clip: torch.Tensor, colour: str):
    """Per frame: (pixel count, centroid x, centroid y) of the pixels that have the shape's colour."""
    rgb = torch.tensor(data.COLOURS[colour]).view(3, 1, 1) * 2 - 1
    out = []
    for f in range(clip.shape[1]):
        mask = (clip[:, f] - rgb).abs().amax(0) < 0.02
        ys, xs = torch.nonzero(mask, as_tuple=True)
        out.append((int(mask.sum()), float(xs.float().mean()), float(ys.float().mean())))
    return out


@pytest.mark.parametrize("colour", list(data.COLOURS))
def test_clips_show_the_condition(colour):
    left_right = _shape_track(data.render_clip(f"{colour} square left-right", 0, 1), colour)
    up_down = _shape_track(data.render_clip(f"{colour} circle up-down", 0, 2), colour)
    grow = _shape_track(data.render_clip(f"{colour} triangle grow", 0, 3), colour)
    rotate = data.render_clip(f"{colour} square rotate", 0, 4)
    assert all(n > 0 for n, _, _ in left_right + up_down + grow[4:])
    assert max(x for _, x, _ in left_right) - min(x for _, x, _ in left_right) > 8  # moves sideways
    assert max(y for _, _, y in left_right) - min(y for _, _, y in left_right) < 1.0
    assert max(y for _, _, y in up_down) - min(y for _, _, y in up_down) > 8  # moves vertically
    assert max(x for _, x, _ in up_down) - min(x for _, x, _ in up_down) < 1.0
    assert grow[-1][0] > 4 * max(grow[2][0], 1)  # grows
    assert not torch.equal(rotate[:, 0], rotate[:, 8])  # turns (a square changes its pixels)


def test_conditions_and_embeddings():
    assert len(data.CONDITIONS) == len(set(data.CONDITIONS)) >= 16
    assert data.parse_condition("rotate Blue square") == ("blue", "square", "rotate")
    emb = data.condition_embedding(["red circle grow", "grow circle red", "red circle rotate"])
    assert emb.shape == (3, 3, data.TEXT_DIM)
    assert torch.equal(emb[0], emb[1]) and not torch.equal(emb[0], emb[2])
    assert torch.equal(data.null_embedding(2), torch.zeros(2, 3, data.TEXT_DIM))
    with pytest.raises(ValueError, match="exactly one shape"):
        data.parse_condition("red grow")
    with pytest.raises(ValueError, match="exactly one colour"):
        data.parse_condition("red blue circle grow")
    with pytest.raises(ValueError, match="unknown words"):
        data.parse_condition("red circle grow quickly")


def test_shipped_checkpoint_loads_and_samples():
    weights = CHECKPOINT_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    record = json.loads((CHECKPOINT_DIR / "train.json").read_text())
    pipe = load_reference_pipeline()
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    n = sum(p.numel() for p in pipe.transformer.parameters())
    assert n <= 10_000_000 and n == record["parameters"]
    gen = torch.Generator().manual_seed(0)
    video = pipe("yellow circle grow", num_inference_steps=3, generator=gen, output_type="pt").frames
    assert video.shape == (1, data.FRAMES, 3, data.SIZE, data.SIZE)
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    latent = pipe(["red square rotate", "blue circle up-down"], num_inference_steps=2, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).frames
    assert latent.shape == (2, data.LATENT_CHANNELS, 5, data.SIZE, data.SIZE) and torch.isfinite(latent).all()
    frames = pipe("red square rotate", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, data.FRAMES, data.SIZE, data.SIZE, 3)  # np, like WanPipeline


def test_pipeline_rejects_bad_input():
    pipe = load_reference_pipeline()
    with pytest.raises(ValueError, match="exactly one colour"):
        pipe("circle grow", num_inference_steps=2)
    with pytest.raises(ValueError, match="no negative prompts"):
        pipe("red circle grow", negative_prompt="blurry", num_inference_steps=2)
    with pytest.raises(FileNotFoundError, match="sencache.reference.train"):
        load_reference_pipeline("/nonexistent/checkpoint")


@pytest.mark.slow
def test_training_script_smoke(tmp_path):
    from PIL import Image

    from sencache import SensitivityProfile
    from sencache.reference.train import GRID_CONDITIONS, TRAIN, train

    record = train(tmp_path, steps=3, batch=2, log_every=1, sample_steps=2, judge_samples=2, profile_samples=2)
    assert record["train"]["steps"] == 3 and len((tmp_path / "loss.csv").read_text().splitlines()) == 4
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "train.json", "loss.png", "samples.png",
                 "samples.gif", "sencache_profile.safetensors", "judged.json"):
        assert (tmp_path / name).is_file(), name
    judged = json.loads((tmp_path / "judged.json").read_text())
    assert judged["num_samples"] == 2 and judged["sampler_steps"] == 2
    assert SensitivityProfile.load(str(tmp_path / "sencache_profile.safetensors")).jx_samples.shape[0] == 2
    pipe = load_reference_pipeline(tmp_path)
    assert pipe("red circle grow", num_inference_steps=2, output_type="latent").frames.shape[1:3] == (12, 5)
    # the record and the loss log describe this run
    assert json.loads((tmp_path / "train.json").read_text()) == record
    assert record["train"] == dict(TRAIN, steps=3, batch=2)
    assert record["parameters"] == sum(p.numel() for p in pipe.transformer.parameters())
    assert "--steps 3 --batch 2" in record["command"] and set(record["versions"]) == {"torch", "diffusers", "python"}
    rows = [line.split(",") for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert [int(s) for s, _ in rows] == [0, 1, 2]
    assert abs(record["final_loss_mean_last_100"] - sum(float(v) for _, v in rows) / 3) <= 5e-7  # csv: 6 decimals
    # the sample grid: 12 conditions x every 4th of 17 frames at 3x, after a label column; the GIF: 4 x 3 clips
    with Image.open(tmp_path / "samples.png") as im:
        assert im.size == (150 + 5 * 3 * data.SIZE, len(GRID_CONDITIONS) * 3 * data.SIZE)
    with Image.open(tmp_path / "samples.gif") as im:
        assert im.size == (4 * 3 * data.SIZE, 3 * 3 * data.SIZE) and im.n_frames == data.FRAMES
    with Image.open(tmp_path / "loss.png") as im:
        assert im.size == (720, 420)  # 6 x 3.5 inches at 120 dpi


def test_shipped_judge_recognises_held_out_clips():
    from sencache.reference import judge

    j = judge.load_judge(CHECKPOINT_DIR)
    clips, prompts = data.sample_clips(48, seed=judge.EVAL_SEED, start=10_000)  # past the clips judged.json used
    acc = judge.accuracy(j, clips, prompts)
    assert acc["colour"] >= 0.95 and acc["motion"] >= 0.95 and acc["shape"] >= 0.8, acc
    record = json.loads((CHECKPOINT_DIR / "judged.json").read_text())
    assert record["num_samples"] >= len(data.CONDITIONS) and set(record["samples"]) == set(acc)


def test_judge_accuracy_counts_each_attribute():
    """A judge rigged to answer red, circle, grow for every clip: the accuracies are the fractions of the prompts
    with that colour (3 of 4), shape (2 of 4), motion (1 of 4) and all three (1 of 4)."""
    from sencache.reference import judge

    j = judge.Judge()
    answer = {"colour": "red", "shape": "circle", "motion": "grow"}
    with torch.no_grad():
        for name, head in j.heads.items():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[judge.ATTRIBUTES[name].index(answer[name])] = 1.0
    clips, _ = data.sample_clips(4, seed=5, start=0)
    prompts = ["red circle grow", "red square rotate", "red circle up-down", "blue triangle left-right"]
    assert judge.accuracy(j, clips, prompts) == {"colour": 0.75, "shape": 0.5, "motion": 0.25, "all": 0.25}


def test_judge_trains_and_checks_its_inputs():
    from sencache.reference import judge

    torch.manual_seed(judge.JUDGE_TRAIN["seed"])
    init = judge.Judge()  # the initialisation train_judge starts from
    j = judge.train_judge(steps=2, batch=3)
    assert not j.training
    assert all(not torch.equal(a, b) for a, b in zip(j.parameters(), init.parameters(), strict=True))  # it trained
    clips, prompts = data.sample_clips(3, seed=5, start=0)
    with pytest.raises(ValueError, match="B prompts"):
        judge.accuracy(j, clips, prompts[:2])
    with pytest.raises(FileNotFoundError, match="--train"):
        judge.load_judge("/nonexistent")
