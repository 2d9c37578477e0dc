"""A synthetic image task: name the colour and shape of a figure drawn on a noisy background, as OpenAI chat lines
with the image as a PNG data URL (or Gemini lines with inlineData), split 80/20.

    python examples/shapes.py OUT_DIR [--count 600] [--seed 7]

writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl. Twelve answers ("red circle" ... "yellow triangle"); each figure
has its own size, a jittered centre and shade, on a background of random light grey-ish noise, so the answer has to be
read from the pixels: the prompt is the same for every line."""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
from pathlib import Path

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (225, 200, 30)}
SHAPES = ("circle", "square", "triangle")
ANSWERS = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
PROMPT = "What is drawn?"
SIZE = 48  # pixels; the model's processor resizes to its own


def draw(rng: random.Random, colour: str, shape: str, size: int = SIZE):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size))
    image.putdata([tuple(rng.randint(190, 255) for _ in range(3)) for _ in range(size * size)])
    pen = ImageDraw.Draw(image)
    r = rng.randint(int(size * 0.3), size // 3 + 2)
    cx, cy = size // 2 + rng.randint(-3, 3), size // 2 + rng.randint(-3, 3)
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour])
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def chat_line(image, answer: str | None) -> dict:
    """An OpenAI chat line (a prompt when `answer` is None)."""
    user = {
        "role": "user",
        "content": [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": data_url(image)}}],
    }
    return {"messages": [user] + ([{"role": "assistant", "content": answer}] if answer is not None else [])}


def gemini_line(image, answer: str) -> dict:
    inline = {"mimeType": "image/png", "data": base64.b64encode(png(image)).decode()}
    return {
        "contents": [
            {"role": "user", "parts": [{"text": PROMPT}, {"inlineData": inline}]},
            {"role": "model", "parts": [{"text": answer}]},
        ]
    }


def examples(count: int, seed: int) -> list[tuple[object, str]]:
    """(image, answer) pairs, the answers balanced over the twelve."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        answer = ANSWERS[i % len(ANSWERS)]
        colour, shape = answer.split()
        out.append((draw(rng, colour, shape), answer))
    rng.shuffle(out)
    return out


def split(count: int, seed: int) -> tuple[list, list]:
    pairs = examples(count, seed)
    cut = int(len(pairs) * 0.8)
    return pairs[:cut], pairs[cut:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    train, test = split(args.count, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pairs in (("train", train), ("test", test)):
        with open(args.out / f"{name}.jsonl", "w") as f:
            for image, answer in pairs:
                f.write(json.dumps(chat_line(image, answer)) + "\n")


if __name__ == "__main__":
    main()
