"""How well the synthetic world's judges read media degraded the way tokenizers and codecs do.

    .venv/bin/python -P -m anyseq.judge_robustness --out bench/judges.json

Prints the README's judges table: exact match of every attribute over random scenes (seeded),
clean and under each degradation. The tests run the same function at smaller counts.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from PIL import Image, ImageFilter

from anyseq import world as W
from anyseq.judges import judge

# stand-ins for what a tokenizer reconstruction or a lossy codec does to the media


def blur(x, rng):
    return np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1.0)))


def jpeg(x, rng):
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=30)
    return np.asarray(Image.open(buffer).convert("RGB"))


def noise(x, rng):
    return np.clip(x + rng.normal(0, 12, x.shape), 0, 255).astype(np.uint8)


def down_up(x, rng):
    size = x.shape[0]
    small = Image.fromarray(x).resize((size // 2, size // 2), Image.BILINEAR)
    return np.asarray(small.resize((size, size), Image.BILINEAR))


IMAGE_DEGRADATIONS = {"blur": blur, "jpeg": jpeg, "noise": noise, "down_up": down_up}


def white_noise_0db(x, rng):
    return x + rng.normal(0, np.sqrt((x**2).mean()), x.shape)


def resample_8k(x, rng):
    return AF.resample(AF.resample(torch.from_numpy(x), 16000, 8000), 8000, 16000).numpy()


def quantise_6bit(x, rng):
    return np.round(x * 32) / 32


def quiet(x, rng):
    return 0.1 * x


SOUND_DEGRADATIONS = {
    "noise_0db": white_noise_0db, "resample_8k": resample_8k, "quantise_6bit": quantise_6bit, "quiet": quiet,
}  # fmt: skip


def accuracy(kind, n, seed, degrade=None, **render):
    """Share of n random scenes (seeded) whose judged scene equals the drawn one."""
    rng = np.random.default_rng(seed)
    sample = {"image": W.sample_image_scene, "video": W.sample_video_scene, "audio": W.sample_sound_scene}[kind]
    correct = 0
    for _ in range(n):
        scene = sample(rng)
        if kind == "image":
            x = W.render_image(scene, rng=rng, **render)
            x = degrade(x, rng) if degrade else x
        elif kind == "video":
            x = W.render_video(scene, rng=rng, **render)
            x = np.stack([degrade(f, rng) for f in x]) if degrade else x
        else:
            x = W.render_sound(scene, rng=rng, **render)
            x = degrade(x, rng) if degrade else x
        correct += judge(kind, x, render.get("sample_rate", 16000)) == scene
    return correct / n



def robustness_table(images: int = 300, videos: int = 150, sounds: int = 300, size: int = 32) -> dict:
    """Accuracy per medium and degradation ("clean" first), the seeds fixed per medium."""
    cells = {"image": {"clean": accuracy("image", images, 1, size=size)},
             "video": {"clean": accuracy("video", videos, 2, size=size)},
             "audio": {"clean": accuracy("audio", sounds, 3)}}
    for name, degrade in IMAGE_DEGRADATIONS.items():
        cells["image"][name] = accuracy("image", images, 1, degrade, size=size)
        cells["video"][name] = accuracy("video", videos, 2, degrade, size=size)
    for name, degrade in SOUND_DEGRADATIONS.items():
        cells["audio"][name] = accuracy("audio", sounds, 3, degrade)
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--videos", type=int, default=150)
    p.add_argument("--sounds", type=int, default=300)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", type=Path, help="JSON file for the table")
    args = p.parse_args(argv)
    cells = robustness_table(args.images, args.videos, args.sounds, args.size)
    for medium, row in cells.items():
        print(f"{medium:>5}: " + "  ".join(f"{name} {value:.3f}" for name, value in row.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"}, "accuracy": cells},
                                       indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
