"""Distillation jobs (a Hone method, `method: {"type": "distillation", "distillation": {"teacher": ...}}`): a teacher
model answers the training file's prompts, then the student trains on those answers with the supervised loss.
What a request may ask and what "auto" resolves to; the generation is the trainer's (trainer/distill.py), through
the trainer contract's MODEL_CHAT route, so the teacher is any model the project may call, counted as its usage."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hone_kernel.trainer_contract import Distillation
from service import external_models
from service.base_models import TrainingDefaults
from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest
from service.schemas import DistillationMethod
from service.settings import GradersSettings

PARAM = "method.distillation"
ANSWERS_FILE = "teacher_answers.jsonl"


def check_method(section: DistillationMethod | None) -> None:
    if section is None:
        raise InvalidRequest(
            "A distillation job needs method.distillation with its teacher.",
            param=f"{PARAM}.teacher",
            code=ErrorCode.MISSING_REQUIRED_PARAMETER,
        )


def check_teacher(ctx: AppContext, session: Session, project_id: str, method: dict) -> None:
    external_models.require_callable(
        ctx, session, project_id, method["distillation"]["teacher"], param=f"{PARAM}.teacher", role="teacher"
    )


def resolve(hp: dict, d: TrainingDefaults) -> dict:
    """The teacher's settings made concrete (the student's are the supervised ones, resolved by training_plan)."""
    if hp.get("samples_per_prompt") in (None, "auto"):
        hp["samples_per_prompt"] = 1
    if hp.get("temperature") in (None, "auto"):
        hp["temperature"] = 0.0 if hp["samples_per_prompt"] == 1 else 1.0
    if hp.get("max_completion_tokens") in (None, "auto"):
        hp["max_completion_tokens"] = d.rl_max_completion_tokens
    return hp


def trainer_section(job_id: str, method: dict, graders: GradersSettings) -> Distillation:
    section = method["distillation"]
    hp = section["hyperparameters"]
    return Distillation(
        teacher=section["teacher"],
        samples_per_prompt=hp["samples_per_prompt"],
        temperature=hp["temperature"],
        max_completion_tokens=hp["max_completion_tokens"],
        model_call_timeout_s=graders.grader_model_timeout_s,
        concurrency=graders.eval_concurrency,
        answers_key=f"jobs/{job_id}/{ANSWERS_FILE}",
    )
