"""The SDK is typed for its users: a usage example type-checks under `mypy --strict --disallow-any-expr` (no value
of the SDK's reaches it as `Any`), and misuses of it are caught. mypy runs as a user's would, on a file outside the
package, reading the annotations `hone/py.typed` marks as public. About a second of CPU with mypy's cache warm
(the repository's .mypy_cache), some ten cold."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import REPO

USAGE = """
import asyncio
from pathlib import Path

import openai

import hone
from hone.types import (
    Checkpoint, ChatCompletion, Endpoint, FileObject, FineTuningJob, JobEvent, JobProgress, Model, StepMetrics,
)


def report(progress: JobProgress) -> None:
    print(progress.status, progress.step, progress.fraction, progress.queue_position)


def main() -> None:
    client = hone.Client("http://127.0.0.1:8000", "sk-...")
    assert isinstance(client.openai, openai.OpenAI)
    file: FileObject = client.files.create(Path("train.jsonl"), on_progress=lambda sent, total: None)
    examples: int | None = file.dataset.examples if file.dataset else None
    job: FineTuningJob = client.jobs.create("hone-tiny", file.id, hyperparameters={"n_epochs": 1}, suffix="s")
    job = client.jobs.wait(job.id, timeout=600, on_progress=report)
    done: bool = job.done
    if job.evaluation and job.evaluation.results and job.evaluation.results.tuned:
        score: float | None = job.evaluation.results.tuned.score
    for event in client.jobs.follow(job.id):
        step: StepMetrics | None = event.metrics
        message: str = event.message
    events: list[JobEvent] = list(client.jobs.events(job.id))
    checkpoints: list[Checkpoint] = list(client.jobs.checkpoints(job.id))
    log: str = client.jobs.logs(job.id, attempt=1)
    csv_text: str = client.jobs.results(job.id)
    models: list[Model] = client.models.list().data
    endpoint: Endpoint = client.endpoints.wait(client.endpoints.create(job.fine_tuned_model or "hone-tiny").id)
    reply: ChatCompletion = client.chat(endpoint.model, "Hello!", temperature=0, max_tokens=8)
    text: str = reply.text
    for chunk in client.chat(endpoint.model, [{"role": "user", "content": "Hi"}], stream=True):
        piece: str = chunk.text
    saved: Path = client.models.download(endpoint.model, "model.tar")
    data: bytes = client.files.content(file.id)
    print(examples, done, events, checkpoints, log, csv_text, models, text, saved, data)


async def amain() -> None:
    async with hone.AsyncClient() as client:
        job: FineTuningJob = await client.jobs.retrieve("ftjob-1")
        async for event in client.jobs.follow(job.id):
            message: str = event.message
        files: list[FileObject] = [f async for f in client.files.list()]
        reply: ChatCompletion = await client.chat("hone-tiny", "Hi")
        print(message, files, reply.text)


asyncio.run(amain())
"""

MISUSE = """
import hone

client = hone.Client()
job = client.jobs.retrieve("ftjob-1")
client.jobs.create(model=1, training_file="file-1")
job.fine_tuned_model.upper()
client.files.content(42)
client.chat("hone-tiny", "hi").choices[0].message.text
"""


def _mypy(tmp_path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "usage.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--disallow-any-expr",
            "--no-error-summary",
            "--cache-dir",
            str(REPO / ".mypy_cache" / "sdk-typing"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_a_usage_example_type_checks_strictly_and_misuse_does_not(tmp_path):
    good = _mypy(tmp_path, USAGE)
    assert good.returncode == 0, good.stdout + good.stderr

    bad = _mypy(tmp_path, MISUSE)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    errors = bad.stdout
    assert 'Argument "model" to "create" of "Jobs" has incompatible type "int"' in errors
    assert 'Item "None" of "str | None" has no attribute "upper"' in errors
    assert 'Argument 1 to "content" of "Files" has incompatible type "int"' in errors
    assert '"ChatCompletionMessage" has no attribute "text"' in errors
