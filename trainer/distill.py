"""Distillation's first phase: the teacher answers every prompt of the training (and validation) file (OpenAI prompt
lines, or Gemini ones from a Vertex distillationSpec, asked as chat messages either way), through the control
plane's MODEL_CHAT route (trainer/model_calls.py: bounded and retried), `concurrency` calls at once; the answers are
written as OpenAI chat lines (the prompt's messages and the teacher's answer), which the student then
trains on with the supervised loss, and which the user can download (the job's result files).

A resumed attempt finds the answers already written and does not ask the teacher again. A prompt the teacher could
not answer is left out, and said in an event; none answered fails the job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from hone_kernel.dataset_prompts import prompt_messages
from hone_kernel.graders.run import ModelCallFailed
from hone_kernel.trainer_contract import Distillation, FileRef, TrainSpec
from trainer.blobs import Blobs
from trainer.data import held_out
from trainer.failures import FatalError
from trainer.model_calls import ControlPlaneModels
from trainer.reporting import main_thread


class NoAnswers(Exception):
    """The teacher answered none of a file's prompts."""


def answers_key(d: Distillation, what: str) -> str:
    return d.answers_key if what == "training file" else d.answers_key.replace(".jsonl", ".validation.jsonl")


def teacher_file(
    d: Distillation,
    blobs: Blobs,
    ref: FileRef,
    what: str,
    models: Callable[[], ControlPlaneModels],
    on_progress: Callable[[int, int, int], None],
) -> tuple[FileRef, int]:
    """The file of the teacher's answers to `ref`'s prompts (written now, or by an earlier attempt), and how many
    prompts got no answer in this call (0 when it was written before)."""
    key = answers_key(d, what)
    if key in blobs.list(key):
        return FileRef(key, "openai_chat"), 0
    rows = [json.loads(raw) for raw in held_out(blobs.iter_lines(ref.key), ref.exclude_examples) if raw.strip()]
    lines, failed = asyncio.run(_answer_all(d, rows, ref.format, models(), on_progress))
    if not lines:
        raise NoAnswers(f"The teacher {d.teacher} answered none of the {len(rows)} prompts of the {what}.")
    blobs.put_bytes(key, b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines))
    return FileRef(key, "openai_chat"), failed


async def _answer_all(
    d: Distillation,
    rows: list[dict],
    fmt: str,
    models: ControlPlaneModels,
    on_progress: Callable[[int, int, int], None],
) -> tuple[list[dict], int]:
    slots = asyncio.Semaphore(d.concurrency)
    done, failed = 0, 0
    params = {"temperature": d.temperature, "max_tokens": d.max_completion_tokens}

    async def answer(row: dict) -> list[dict]:
        nonlocal done, failed
        messages = prompt_messages(row, fmt)  # OpenAI or Gemini prompt lines, as chat messages
        out = []
        async with slots:
            for _ in range(d.samples_per_prompt):
                try:
                    reply = await models.chat(d.teacher, messages, params)
                except ModelCallFailed:
                    continue
                if reply.text:
                    line: dict = {"messages": [*messages, {"role": "assistant", "content": reply.text}]}
                    if row.get("tools"):
                        line["tools"] = row["tools"]
                    out.append(line)
        done += 1
        failed += not out
        on_progress(done, len(rows), failed)
        return out

    try:
        answered = await asyncio.gather(*(answer(row) for row in rows))
    finally:
        await models.aclose()
    return [line for lines in answered for line in lines], failed


def use_teacher_answers(spec: TrainSpec, blobs: Blobs, reporter) -> None:
    """Points the spec's files at the teacher's answers to their prompts, asking the teacher first if needed."""
    d = spec.distillation
    assert d is not None

    def models() -> ControlPlaneModels:
        return ControlPlaneModels(spec.callback_url, spec.token, spec.job_id, d.model_call_timeout_s, d.concurrency)

    for what in ("training file", "validation file"):
        ref = spec.training_file if what == "training file" else spec.validation_file
        if ref is None:
            continue

        def progress(done: int, total: int, failed: int, what=what) -> None:
            main_thread.mark()  # teacher calls are the main thread's work: heartbeats go on
            if done == total or done % 50 == 0:
                reporter.event(
                    f"Teacher {d.teacher} answered {done - failed}/{total} prompts of the {what}",
                    key=f"teacher:{what}:{done}",
                    data={"answered": done - failed, "prompts": total, "failed": failed},
                )

        try:
            answers, failed = teacher_file(d, blobs, ref, what, models, progress)
        except NoAnswers as exc:
            raise FatalError("teacher_failed", str(exc)) from exc
        if failed:
            reporter.event(
                f"{failed} prompt(s) of the {what} got no answer from the teacher and are left out.",
                level="warn",
                key=f"teacher-failed:{what}",
                data={"failed": failed},
            )
        if what == "training file":
            spec.training_file = answers
        else:
            spec.validation_file = answers


def await_teacher_answers(spec: TrainSpec, blobs: Blobs, poll_s: float = 1.0) -> None:
    """A data-parallel rank other than 0: waits until rank 0 has written the teacher's answers (use_teacher_answers),
    then points the spec's files at them as rank 0 does. No collective meanwhile: the teacher may take longer than
    any collective's timeout. Should rank 0 fail instead, its launcher ends this rank (trainer/ranks.py)."""
    d = spec.distillation
    assert d is not None
    for what in ("training file", "validation file"):
        if (spec.training_file if what == "training file" else spec.validation_file) is None:
            continue
        key = answers_key(d, what)
        while key not in blobs.list(key):
            time.sleep(poll_s)
        answers = FileRef(key, "openai_chat")
        if what == "training file":
            spec.training_file = answers
        else:
            spec.validation_file = answers
