"""The trainer contract (hone_kernel/trainer_contract.py) is one module both sides import: a spec the control plane
writes is read back identically by the trainer, a newer contract is refused instead of half-read, the control
plane validates report bodies with exactly the contract's fields and limits, and exit codes are written once."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from hone_kernel import trainer_contract as contract
from hone_kernel.trainer_contract import CONTRACT_VERSION, ContractError, ExitCode, FileRef, TrainSpec
from service import trainer_reports, training_plan
from service.context import AppContext
from service.db.tables import File, Job
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _job(method: dict) -> tuple[Job, dict[str, File]]:
    train = File(id="file-train", storage_key="files/file-train", dataset_format="openai_chat")
    valid = File(id="file-valid", storage_key="files/file-valid", dataset_format="openai_chat")
    job = Job(
        id="ftjob-contract",
        project_id="proj_x",
        base_model="hone-tiny",
        training_file=train.id,
        validation_file=valid.id,
        method=method,
        seed=42,
        attempts=2,
        parent_prefix=None,
        integrations=[],
    )
    return job, {train.id: train, valid.id: valid}


HYPER = {
    "n_epochs": 3,
    "batch_size": 4,
    "learning_rate_multiplier": 2.0,
    "tuning_mode": "lora",
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "lora_dropout": 0.0,
    "lora_target_modules": ["q_proj", "v_proj"],
    "warmup_ratio": 0.1,
    "lr_scheduler": "cosine",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "max_length": 512,
}


@pytest.mark.parametrize(
    "method",
    [
        {"type": "supervised", "supervised": {"hyperparameters": HYPER}},
        {"type": "dpo", "dpo": {"hyperparameters": {**HYPER, "beta": 0.2}}},
        {"type": "supervised", "supervised": {"hyperparameters": {**HYPER, "tuning_mode": "full"}}},
    ],
)
def test_a_spec_the_control_plane_writes_is_read_back_identically(tmp_path, method):
    ctx = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    job, files = _job(method)
    url = training_plan.write_spec(ctx, job, files, "tok-secret", "ft:hone-tiny:p::ftjob-contract")
    written = training_plan.build_spec(ctx, job, files, "tok-secret", "ft:hone-tiny:p::ftjob-contract")
    raw = ctx.storage.read_bytes(training_plan.spec_key(job.id))
    read = TrainSpec.from_json(raw)  # what `python -m trainer --spec URL` does with it
    assert read == written and url.endswith("/jobs/ftjob-contract/spec.json")
    assert json.loads(raw)["contract_version"] == CONTRACT_VERSION
    assert read.hyperparameters.n_epochs == 3 and read.attempt == 2 and read.token == "tok-secret"
    if method["type"] == "dpo":
        assert read.hyperparameters.beta == 0.2


def test_a_newer_contract_is_refused_and_additions_are_ignored(tmp_path):
    ctx = AppContext.build(Settings(data_dir=tmp_path, storage_url=(tmp_path / "blobs").as_uri()))
    job, files = _job({"type": "supervised", "supervised": {"hyperparameters": HYPER}})
    body = json.loads(training_plan.build_spec(ctx, job, files, "t", "m").to_json())
    with pytest.raises(ContractError, match="contract version 2"):
        TrainSpec.from_json(json.dumps({**body, "contract_version": CONTRACT_VERSION + 1}))
    with pytest.raises(ContractError):
        TrainSpec.from_json(json.dumps({k: v for k, v in body.items() if k != "contract_version"}))
    assert TrainSpec.from_json(json.dumps({**body, "a_field_from_later": 1})).job_id == "ftjob-contract"


@pytest.mark.parametrize(
    "dataclass, model",
    [
        (contract.ReportedEvent, trainer_reports.ReportedEvent),
        (contract.ReportedCheckpoint, trainer_reports.ReportedCheckpoint),
        (contract.Report, trainer_reports.Report),
        (contract.Completion, trainer_reports.Completion),
        (contract.Failure, trainer_reports.Failure),
    ],
)
def test_the_control_plane_validates_exactly_the_contracts_messages(dataclass, model):
    assert {f.name for f in dataclasses.fields(dataclass)} == set(model.model_fields)


def test_a_message_the_trainer_builds_passes_the_control_planes_validation():
    event = contract.ReportedEvent("ftevent-abc123", 1, "info", "m" * contract.MAX_MESSAGE_CHARS, "metrics", {"a": 1})
    report = contract.Report(
        [event], [contract.ReportedCheckpoint(5, {"loss": 0.5}, "jobs/j/checkpoints/step-5/")], {"step": 5}
    )
    assert trainer_reports.Report.model_validate(contract.message(report)).events[0].id == "ftevent-abc123"
    too_long = dataclasses.replace(event, message="m" * (contract.MAX_MESSAGE_CHARS + 1))
    with pytest.raises(ValueError):
        trainer_reports.ReportedEvent.model_validate(contract.message(too_long))
    trainer_reports.Failure.model_validate(contract.message(contract.Failure("training_diverged", "lower the lr")))


def test_exit_codes_are_written_once():
    """No module but the contract spells a trainer exit code as a number."""
    offenders = []
    for path in [*REPO.glob("service/**/*.py"), *REPO.glob("trainer/**/*.py"), *REPO.glob("inference/**/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"EXIT_\w+\s*=\s*\d+|_exit\(\d+\)|returncode\s*==\s*\d\d", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
    assert ExitCode.STOPPED == 75 and ExitCode.THREAD_CRASHED == 70  # EX_TEMPFAIL, EX_SOFTWARE (sysexits.h)


def test_held_out_examples_are_blanked_where_they_stand():
    """The trainer skips the examples a job's evaluation holds out (FileRef.exclude_examples, counted over non-blank
    lines as the control plane counts them), leaving every other line at its number."""
    from trainer.data import held_out

    lines = [b"a", b"", b"b", b"  ", b"c", b"d"]
    assert list(held_out(lines, [1, 3])) == [b"a", b"", b"", b"  ", b"c", b""]
    assert list(held_out(lines, [])) == lines
    spec = FileRef("k", "openai_chat", [4, 7])
    assert FileRef(**json.loads(json.dumps(dataclasses.asdict(spec)))) == spec
