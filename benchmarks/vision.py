"""Vision fine-tuning on "auto": held-out accuracy of hone-tiny-vision tuned on images, over several seeds and dataset
sizes, next to its base; and what an image costs in training and serving, against text of the same length.

    .venv/bin/python benchmarks/vision.py            # 4 jobs (600 images x 3 seeds, 300 x 1) + speed (~8 min on 2 cores)
    .venv/bin/python benchmarks/vision.py --quick    # 1 job + speed

Accuracy: the real server (tests.support.HoneServer: SQLite, local folder, the built-in engine), as a user does it:
upload examples/shapes.py's lines through the openai SDK, create a job on `hone-tiny-vision` with no hyperparameters,
wait for its endpoint, ask every held-out image through `/v1/chat/completions` (temperature 0); the base model is
asked the same images. Goals (PASS/MISS, never a non-zero exit): every job >= 90%, the base <= 20%.

Speed, in process (the trainer's Run, the engine's Engine): one epoch of 480 image examples at the auto batch size,
against the same examples with each image replaced by text of as many tokens (the baseline, measured in the same
run); and greedy answers to 40 image prompts against 40 text prompts of the same token count. The difference is
what the images cost: the processor (decode, resize, normalise) and the vision tower.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.revision import git_revision  # noqa: E402
from examples import shapes  # noqa: E402
from tests.support import MODEL_CACHE, HoneServer, jsonl, wait_endpoint, wait_job  # noqa: E402

HELD_OUT = 120


def _answer(client, model: str, image) -> str:
    messages = shapes.chat_line(image, None)["messages"]
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=8)
    return (reply.choices[0].message.content or "").strip()


def accuracy_runs(runs: list[tuple[int, int]]) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        server = HoneServer(Path(tmp), {"HONE_AUTO_DEPLOY": "true", "HONE_LOCAL_SLOTS": "1"})
        try:
            project = server.new_project("vision benchmark")
            client = project.openai(timeout=600)
            base_done = False
            for count, seed in runs:
                train, held_out = shapes.split(count, seed)
                held_out = held_out[:HELD_OUT]
                upload = jsonl([shapes.chat_line(image, answer) for image, answer in train])
                file = client.files.create(file=("shapes.jsonl", upload), purpose="fine-tune")
                started = time.monotonic()
                job = client.fine_tuning.jobs.create(model="hone-tiny-vision", training_file=file.id, seed=seed)
                job = wait_job(client, job.id, lambda j: j.status in ("succeeded", "failed"), timeout=1800)
                trained_s = time.monotonic() - started
                assert job.status == "succeeded", job.error
                with project.http() as http:
                    wait_endpoint(http, job.fine_tuned_model, timeout=600)
                hp = job.hyperparameters
                right = sum(_answer(client, job.fine_tuned_model, img) == ans for img, ans in held_out)
                row = {
                    "examples": len(train),
                    "seed": seed,
                    "n_epochs": hp.n_epochs,
                    "batch_size": hp.batch_size,
                    "job_s": round(trained_s, 1),
                    "tuned": right / len(held_out),
                }
                if not base_done:
                    base = sum(_answer(client, "hone-tiny-vision", img) == ans for img, ans in held_out)
                    row["base"], base_done = base / len(held_out), True
                out.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
    return out


def _text_twin(row: dict, filler: str) -> dict:
    """The line with its image replaced by text of as many tokens (the speed baseline)."""
    twin = json.loads(json.dumps(row))
    twin["messages"][0]["content"] = shapes.PROMPT + filler
    return twin


def train_speed(examples: int = 480, batch_size: int = 4) -> dict:
    from hone_kernel.tiny_vision_model import IMAGE_TOKENS
    from hone_kernel.trainer_contract import ExitCode, FileRef, Hyperparameters, TrainSpec
    from tests.test_trainer_core import RecordingReporter
    from trainer.blobs import FolderBlobs
    from trainer.loop import Run

    rows = [shapes.chat_line(image, answer) for image, answer in shapes.examples(examples, 1)]
    filler = " the" * IMAGE_TOKENS  # one token each in hone-tiny's vocabulary
    result: dict[str, float] = {}
    twins = [_text_twin(r, filler) for r in rows]
    # interleaved twice, the faster of each kept: the first run of a process pays for loading what both use
    for name, lines in (("images", rows), ("text", twins), ("images", rows), ("text", twins)):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "blobs/files").mkdir(parents=True)
            (root / "blobs/files/train").write_text("".join(json.dumps(r) + "\n" for r in lines))
            (root / "work").mkdir()
            spec = TrainSpec(
                job_id="ftjob-bench",
                fine_tuned_model="ft:bench",
                model_name="hone-tiny-vision",
                model_source="builtin:hone-tiny-vision",
                model_cache_dir=str(MODEL_CACHE),
                storage_url=(root / "blobs").as_uri(),
                training_file=FileRef("files/train", "openai_chat"),
                validation_file=None,
                method="supervised",
                seed=1,
                output_prefix="jobs/bench/",
                callback_url="http://unused",
                token="unused",
                hyperparameters=Hyperparameters(n_epochs=1, batch_size=batch_size, learning_rate=1e-3),
            )
            started = time.perf_counter()
            assert Run(spec, FolderBlobs(root / "blobs"), RecordingReporter(), root / "work").execute() == ExitCode.OK
            result[name] = min(result.get(name, float("inf")), time.perf_counter() - started)
    result["ms_per_image"] = (result["images"] - result["text"]) / examples * 1000
    result["ms_per_example_text"] = result["text"] / examples * 1000
    return result


def serve_speed(prompts: int = 40) -> dict:
    import asyncio

    from hone_kernel.tiny_vision_model import IMAGE_TOKENS, build
    from inference.engine import Engine
    from inference.handlers import OpenAIHandlers
    from inference.models import ServingModels
    from inference.protocol import ChatCompletionRequest

    path = str(build(MODEL_CACHE / "hone-tiny-vision"))
    engine = Engine(path, "base")
    handlers = OpenAIHandlers(ServingModels(engine, "base", path))
    filler = " the" * IMAGE_TOKENS
    images = [shapes.chat_line(image, None) for image, _ in shapes.examples(prompts, 2)]
    texts = [_text_twin({"messages": line["messages"] + [{}]}, filler) for line in images]
    for t in texts:
        t["messages"] = t["messages"][:1]

    async def ask(line: dict) -> None:
        body = ChatCompletionRequest(model="base", messages=line["messages"], max_tokens=4, temperature=0)
        await handlers.chat(body, "bench")

    timings: dict[str, list[float]] = {"text": [], "images": []}
    try:
        for _ in range(2):  # interleaved, the first round warms up
            for image_line, text_line in zip(images, texts):
                for name, line in (("text", text_line), ("images", image_line)):
                    started = time.perf_counter()
                    asyncio.run(ask(line))
                    timings[name].append(time.perf_counter() - started)
    finally:
        engine.stop()
    med = {name: statistics.median(values[prompts:]) * 1000 for name, values in timings.items()}
    return {"text_ms": med["text"], "images_ms": med["images"], "ms_per_image": med["images"] - med["text"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"revision {git_revision()} · {platform.processor() or platform.machine()} · {time.strftime('%Y-%m-%d')}")
    runs = [(600, 1)] if args.quick else [(600, 1), (600, 2), (600, 3), (300, 4)]
    rows = accuracy_runs(runs)
    train = train_speed()
    serve = serve_speed()
    print("\n| examples | seed | auto n_epochs | auto batch_size | job (s) | tuned | base |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = f"{r['base']:.0%}" if "base" in r else ""
        print(
            f"| {r['examples']} | {r['seed']} | {r['n_epochs']} | {r['batch_size']} | {r['job_s']} | {r['tuned']:.0%} | {base} |"
        )
    worst = min(r["tuned"] for r in rows)
    base = rows[0]["base"]
    print(
        f"\naccuracy: worst tuned {worst:.0%} (goal >= 90%: {'PASS' if worst >= 0.9 else 'MISS'}), "
        f"base {base:.0%} (goal <= 20%: {'PASS' if base <= 0.2 else 'MISS'})"
    )
    print(
        f"training, one epoch of 480 examples: text twins {train['text']:.1f} s, with images {train['images']:.1f} s: "
        f"+{train['ms_per_image']:.1f} ms per image ({train['ms_per_example_text']:.1f} ms per text example)"
    )
    print(
        f"serving, median of 40 greedy 4-token answers: text of equal length {serve['text_ms']:.1f} ms, with an image "
        f"{serve['images_ms']:.1f} ms: +{serve['ms_per_image']:.1f} ms per image"
    )


if __name__ == "__main__":
    main()
