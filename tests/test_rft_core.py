"""Reinforcement fine-tuning, in-process: the prompts format and its checks, what the grader reads from each line,
group-normalised advantages, the policy loss's direction, the KL reference, and a real run of the trainer on
hone-tiny that stops and resumes to exactly the weights of a run that never stopped.

The trainer runs in this process on a local folder as its storage; its reporter is a recorder (there is no control
plane here), and the grader is a string_check, which calls no model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from hone_kernel.datasets import DatasetFormat, methods_for, validate_bytes
from hone_kernel.trainer_contract import FileRef, Hyperparameters, Reinforcement, TrainSpec
from service import reinforcement
from tests.support import jsonl

LABEL_GRADER = {
    "type": "string_check",
    "name": "label",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}


def prompt(text: str, **item) -> dict:
    return {"messages": [{"role": "system", "content": "Answer."}, {"role": "user", "content": text}], **item}


# --- the data ---------------------------------------------------------------------------------------------------


def test_prompt_lines_are_their_own_format_with_the_graders_fields():
    report = validate_bytes(jsonl([prompt(f"q{i}", label="a", meta={"n": i}) for i in range(3)]))
    assert report.ok and report.format is DatasetFormat.OPENAI_REINFORCEMENT and report.examples == 3
    assert methods_for(report.format) == {"reinforcement", "distillation"}


def test_a_prompts_file_refuses_a_line_with_its_answer_and_names_it():
    answered = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    weighted = {"messages": [{"role": "user", "content": "q", "weight": 1}]}
    report = validate_bytes(jsonl([prompt("q", label="a"), answered, weighted]))
    found = {(e.line, e.field, e.code) for e in report.errors}
    assert (2, "messages[1].role", "invalid_prompt") in found
    assert (3, "messages[0].weight", "invalid_weight") in found


def test_a_chat_file_still_says_a_line_lacks_its_answer():
    answered = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    report = validate_bytes(jsonl([answered, {"messages": [{"role": "user", "content": "q"}]}]))
    assert report.format is DatasetFormat.OPENAI_CHAT
    assert [(e.line, e.code) for e in report.errors] == [(2, "example_missing_assistant_message")]


def test_lines_without_a_field_the_grader_reads_are_named():
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {
            "label": LABEL_GRADER,
            "close": {
                "type": "text_similarity",
                "name": "close",
                "input": "{{sample.output_text}}",
                "reference": "{{ item.notes[0] }}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "label + close",
    }
    lines = jsonl([prompt("a", label="x", notes=["n"]), prompt("b", label="y"), prompt("c", notes=["n"])]).splitlines()
    missing, total = reinforcement.missing_item_fields(multi, lines)
    assert missing == [(2, "item.notes[0]"), (3, "item.label")] and total == 2
    assert reinforcement.missing_item_fields(LABEL_GRADER, lines[:2]) == ([], 0)


def test_auto_resolves_every_reinforcement_hyperparameter():
    from service.base_models import TrainingDefaults

    d = TrainingDefaults()
    hp = reinforcement.resolve({"compute_multiplier": 0.5}, 5, d)
    assert (hp["batch_size"], hp["n_epochs"], hp["eval_samples"]) == (5, d.rl_epochs, 1)
    assert hp["max_completion_tokens"] == d.rl_max_completion_tokens
    assert reinforcement.samples_per_prompt(hp["compute_multiplier"]) == 4
    assert reinforcement.samples_per_prompt(0.01) == 2 and reinforcement.samples_per_prompt(10) == 64
    assert (hp["beta"], hp["temperature"]) == (reinforcement.DEFAULT_KL_BETA, 1.0)
    from service.base_models import TINY_DEFAULTS  # hone-tiny's own: more passes, cooler samples (README)

    tiny = reinforcement.resolve({}, 288, TINY_DEFAULTS)
    assert (tiny["n_epochs"], tiny["temperature"], tiny["max_completion_tokens"]) == (6, 0.7, 16)


# --- the algorithm ------------------------------------------------------------------------------------------------


def test_advantages_compare_each_answer_with_its_group_only():
    from trainer.rft import advantages

    adv = advantages([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5], n=4)
    assert adv[0] > 0 > adv[1] and adv[1] == adv[2] == adv[3]
    assert abs(sum(adv[:4])) < 1e-6
    assert adv[4:] == [0.0] * 4  # a group that scored alike teaches nothing


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from hone_kernel import tiny_model
    from trainer.modeling import load_base, wrap_for_tuning

    folder = tmp_path_factory.mktemp("models")
    base, tokenizer = load_base("hone-tiny", "builtin:hone-tiny", str(folder))
    # LoRA's A matrices are drawn from torch's global generator, whose state depends on what the worker ran
    # before: seeded, so the test is the same in any order. (Unseeded, at lr 0.5, the steps overshot in one CI run:
    # 5 of 12 seeds failed at 0.5, none at 0.1.)
    torch.manual_seed(0)
    model = wrap_for_tuning(base, Hyperparameters(n_epochs=1, batch_size=1, learning_rate=1e-2))
    assert tiny_model.TINY_MODEL == "hone-tiny"
    return model, tokenizer


def test_the_loss_makes_better_answers_likelier_and_the_reference_is_the_start(tiny):
    from trainer.batches import micro_batches
    from trainer.modeling import sequence_logprobs
    from trainer.rft import Prompt, Rollouts, StartingWeights, policy_loss

    model, tokenizer = tiny
    trainable = [p for p in model.parameters() if p.requires_grad]
    starting = StartingWeights(trainable)
    ids = tokenizer("Label: ", add_special_tokens=False)["input_ids"]
    good, bad = (
        tokenizer("Billing", add_special_tokens=False)["input_ids"],
        tokenizer("Sales", add_special_tokens=False)["input_ids"],
    )
    rollouts = Rollouts(
        [Prompt(ids, {}, "Label:")], n=2, answers=[good, bad], texts=["Billing", "Sales"], stopped=[True, True]
    )

    def logps():
        from trainer.data import Example

        examples = [Example(ids + a, [False] * len(ids) + [True] * len(a)) for a in (good, bad)]
        with torch.no_grad():
            (mb,) = micro_batches(examples, packing=False, token_budget=4096, pad_id=tokenizer.pad_token_id)
            return sequence_logprobs(model, mb).tolist()

    before = logps()
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    for _ in range(3):
        policy_loss(model, rollouts, [1.0, -1.0], 0.04, starting, 4096, tokenizer.pad_token_id)
        optimizer.step()
        optimizer.zero_grad()
    after = logps()
    assert after[0] - after[1] > before[0] - before[1] + 0.1
    moved = [p.detach().clone() for p in trainable]
    with starting.active():  # the starting weights while inside, the trained ones after
        assert logps() == pytest.approx(before, abs=1e-5)
    assert all(torch.equal(p, m) for p, m in zip(trainable, moved))


# --- a real run ---------------------------------------------------------------------------------------------------


class Recorder:
    """What the trainer reports, kept; it can ask the run to stop after a step (as SIGTERM does)."""

    superseded, job_status = False, "running"

    def __init__(self, stop_after: int | None = None):
        self.metrics: list[dict] = []
        self.stop_after, self.run = stop_after, None
        self.checkpoints: list[int] = []

    def event(self, message, *, type="message", data=None, **_):
        if type == "metrics":
            self.metrics.append(data)
            if self.stop_after is not None and data["step"] == self.stop_after:
                self.run.request_stop()

    def checkpoint(self, step, metrics, prefix):
        self.checkpoints.append(step)

    def progress(self, **_):
        pass

    def flush(self, *_, **__):
        return True

    def call(self, path, body):
        self.final = body
        return {"status": "succeeded"}


def _spec(root: Path, cache: str, attempt: int = 1) -> TrainSpec:
    return TrainSpec(
        job_id="ftjob-rl",
        fine_tuned_model="ft:rl",
        model_name="hone-tiny",
        model_source="builtin:hone-tiny",
        model_cache_dir=cache,
        storage_url=f"file://{root}",
        training_file=FileRef("data/train.jsonl", "openai_reinforcement"),
        validation_file=FileRef("data/valid.jsonl", "openai_reinforcement"),
        method="reinforcement",
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=2, learning_rate=1e-3, lr_scheduler="constant"),
        seed=5,
        output_prefix="jobs/ftjob-rl/",
        callback_url="http://127.0.0.1:9",
        token="t",
        attempt=attempt,
        checkpoint_interval_steps=2,
        reinforcement=Reinforcement(grader=LABEL_GRADER, samples_per_prompt=4, max_completion_tokens=6),
    )


def _run(spec: TrainSpec, recorder: Recorder) -> int:
    from trainer.blobs import open_blobs
    from trainer.loop import Run

    run = Run(spec, open_blobs(spec.storage_url), recorder, Path(tempfile.mkdtemp()))  # type: ignore[arg-type]
    recorder.run = run
    return run.execute()


def _adapter(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(root / "jobs/ftjob-rl/adapter/adapter_model.safetensors")


def test_a_run_reports_rewards_and_resumes_exactly(tmp_path):
    from hone_kernel.trainer_contract import ExitCode

    rows = [prompt(f"ticket {i}", label=["Billing", "Sales"][i % 2]) for i in range(8)]
    cache = str(tmp_path / "models")
    runs = {}
    for name in ("straight", "stopped"):
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        (root / "data/train.jsonl").write_bytes(jsonl(rows))
        (root / "data/valid.jsonl").write_bytes(jsonl(rows[:2]))
        runs[name] = root
    straight = Recorder()
    assert _run(_spec(runs["straight"], cache), straight) == ExitCode.OK
    steps = straight.metrics
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        assert 0.0 <= m["train_reward_mean"] <= 1.0 and m["train_grader_errors"] == 0
        assert {"generation_seconds", "grading_seconds", "update_seconds", "train_kl"} <= set(m)
        assert set(m["train_sample"]) == {"prompt", "output", "reward"}
    assert "valid_reward_mean" in steps[-1] and "full_valid_reward_mean" in steps[-1]
    csv = (runs["straight"] / "jobs/ftjob-rl/result.csv").read_text().splitlines()
    assert csv[0] == "step,train_loss,train_reward_mean,train_kl,valid_reward_mean,full_valid_reward_mean"
    assert len(csv) == 5

    first = Recorder(stop_after=2)
    assert _run(_spec(runs["stopped"], cache), first) == ExitCode.STOPPED and first.checkpoints == [2]
    second = Recorder()
    assert _run(_spec(runs["stopped"], cache, attempt=2), second) == ExitCode.OK
    assert [m["step"] for m in second.metrics] == [3, 4]
    resumed = [{k: m[k] for k in ("train_reward_mean", "train_sample")} for m in second.metrics]
    assert resumed == [{k: m[k] for k in ("train_reward_mean", "train_sample")} for m in steps[2:]]
    parity = json.loads((runs["straight"] / "jobs/ftjob-rl/adapter/parity_samples.json").read_text())
    assert parity["format"] == "openai_reinforcement" and parity["smoke"]["messages"][-1]["role"] == "user"
    assert all(s["tokenize"]["add_generation_prompt"] for s in parity["samples"])  # prompts as sampling renders them
    a, b = _adapter(runs["straight"]), _adapter(runs["stopped"])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert straight.final["metrics"]["step"] == 4 and "full_valid_reward_mean" in straight.final["metrics"]


JSON_LABEL = {
    "type": "json_schema",
    "json_schema": {
        "name": "ticket",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["Billing", "Sales"]}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


def test_answers_held_to_the_response_format_are_json_the_grader_reads(tmp_path):
    """With response_format, every answer sampled in training and validation is the schema's JSON (hone-tiny
    untrained answers no JSON at all): a grader reading sample.output_json never errs, and never could without
    the grammar. A schema the grammar cannot enforce fails the job before its first step, naming the field."""
    import dataclasses

    from hone_kernel.trainer_contract import ExitCode

    (tmp_path / "data").mkdir()
    rows = [prompt(f"ticket {i}", label=["Billing", "Sales"][i % 2]) for i in range(8)]
    (tmp_path / "data/train.jsonl").write_bytes(jsonl(rows))
    (tmp_path / "data/valid.jsonl").write_bytes(jsonl(rows[:2]))
    spec = _spec(tmp_path, str(tmp_path / "models"))
    grader = {**LABEL_GRADER, "input": "{{sample.output_json.label}}"}
    spec.reinforcement = dataclasses.replace(
        spec.reinforcement, grader=grader, max_completion_tokens=40, response_format=JSON_LABEL
    )
    recorder = Recorder()
    assert _run(spec, recorder) == ExitCode.OK
    for m in recorder.metrics:
        assert m["train_grader_errors"] == 0, m
        assert json.loads(m["train_sample"]["output"])["label"] in ("Billing", "Sales")
    assert recorder.metrics[-1]["full_valid_grader_errors"] == 0

    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nowhere"}}}
    spec.reinforcement = dataclasses.replace(spec.reinforcement, response_format=bad)
    spec.job_id, spec.output_prefix = "ftjob-rl-bad", "jobs/ftjob-rl-bad/"
    failed = Recorder()
    assert _run(spec, failed) == ExitCode.FATAL and not failed.metrics
    assert failed.final["code"] == "invalid_response_format"
    assert "method.reinforcement.response_format.json_schema.schema" in failed.final["message"]


# --- model graders' calls from the trainer -------------------------------------------------------------------------


def _control_plane(statuses: list[int], delay_s: float = 0.0):
    """A stand-in for the control plane's MODEL_CHAT route on loopback: answers each call with the next status
    (200 with an answer), after `delay_s`; records the bodies."""
    import asyncio
    import json as json_

    bodies: list[dict] = []

    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        bodies.append(json_.loads(await reader.readexactly(length)))
        await asyncio.sleep(delay_s)
        status = statuses.pop(0) if statuses else 200
        payload = json_.dumps(
            {"text": "7", "prompt_tokens": 3, "completion_tokens": 1, "finish_reason": "stop"}
            if status == 200
            else {"error": {"message": f"status {status}"}}
        ).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (status, len(payload))
            + payload
        )
        await writer.drain()
        writer.close()

    return answer, bodies


@pytest.mark.parametrize(
    ("statuses", "delay_s", "timeout_s", "outcome"),
    [
        ([503, 504], 0.0, 20.0, "7"),  # the control plane's passing troubles: retried
        ([502], 0.0, 20.0, "HTTP 502"),  # the model gave up after the control plane's own retries: not again
        ([400], 0.0, 20.0, "HTTP 400"),
        ([], 5.0, 0.5, "no answer within 0.5 s"),  # bounded
    ],
)
def test_model_calls_from_the_trainer_are_retried_and_bounded(statuses, delay_s, timeout_s, outcome):
    import asyncio
    import time

    from hone_kernel.graders.run import ModelCallFailed
    from trainer.model_calls import ControlPlaneModels

    async def scenario():
        handler, bodies = _control_plane(list(statuses), delay_s)
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        models = ControlPlaneModels(f"http://127.0.0.1:{port}", "tok", "ftjob-x", timeout_s)
        started = time.monotonic()
        try:
            reply = await models.chat("judge", [{"role": "user", "content": "a\x00b"}], {"temperature": 0})
            result = reply.text
        except ModelCallFailed as exc:
            result = str(exc)
        finally:
            await models.aclose()
            server.close()
        return result, bodies, time.monotonic() - started

    result, bodies, took = asyncio.run(scenario())
    assert outcome in result
    assert bodies[0]["messages"][0]["content"] == "a\ufffdb"  # NUL, which the control plane refuses, replaced
    if outcome == "7":
        assert len(bodies) == 3
    if delay_s:
        assert took < 2.0


def test_a_sample_shown_in_events_never_carries_nul():
    from hone_kernel.graders.run import Grade
    from trainer.rft import Prompt, Rollouts, reward_metrics

    rollouts = Rollouts([Prompt([1], {}, "q\x00")], n=2, answers=[[5], [6]], texts=["a\x00b", "c"], stopped=[1, 1])
    grades = [Grade("g", "string_check", reward=1.0), Grade("g", "string_check", reward=0.0)]
    sample = reward_metrics("train", grades, rollouts)["train_sample"]
    assert sample == {"prompt": "q\ufffd", "output": "a\ufffdb", "reward": 1.0}
