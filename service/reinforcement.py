"""Reinforcement fine-tuning jobs (OpenAI's `method: {"type": "reinforcement"}`): what a request may ask, what
"auto" resolves to, and the per-line check that every prompt has what the grader reads. The training itself is
the trainer's (trainer/rft.py)."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy.orm import Session

from hone_kernel import output_format
from hone_kernel.graders import spec as grader_spec
from hone_kernel.graders import templates
from hone_kernel.trainer_contract import Reinforcement
from service import external_models
from service.base_models import TrainingDefaults
from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest
from service.schemas import ReinforcementMethod
from service.settings import GradersSettings

PARAM = "method.reinforcement"
BASE_SAMPLES = 8  # answers per prompt at compute_multiplier 1
MIN_SAMPLES, MAX_SAMPLES = 2, 64
DEFAULT_KL_BETA = 0.04
MISSING_SHOWN = 20  # lines named in a failed job's message at most


def check_method(section: ReinforcementMethod | None) -> None:
    """400 for what Hone would otherwise not do as asked."""
    if section is None:
        raise InvalidRequest(
            "A reinforcement job needs method.reinforcement with its grader.",
            param=f"{PARAM}.grader",
            code=ErrorCode.MISSING_REQUIRED_PARAMETER,
        )
    if section.hyperparameters.reasoning_effort != "default":
        raise InvalidRequest(
            f"reasoning_effort '{section.hyperparameters.reasoning_effort}' applies to reasoning models, and Hone's "
            "base models do not reason before answering; leave it out (or 'default').",
            param=f"{PARAM}.hyperparameters.reasoning_effort",
            code=ErrorCode.INVALID_VALUE,
        )
    try:
        output_format.parse(section.response_format, f"{PARAM}.response_format")
    except output_format.FormatError as e:
        raise InvalidRequest(str(e), param=e.param, code=ErrorCode.INVALID_VALUE) from e


def check_grader_models(ctx: AppContext, session: Session, project_id: str, method: dict) -> None:
    """400 when the grader samples a model the project cannot call (another project's reads as missing)."""
    grader = grader_spec.parse(method[method["type"]]["grader"])
    for model in sorted(grader_spec.models_of(grader)):
        external_models.require_callable(
            ctx, session, project_id, model, param=f"{PARAM}.grader.model", role="grader's model"
        )


JSON_ANSWER_TOKENS = 64


def resolve(hp: dict, examples: int, d: TrainingDefaults, json_answers: bool = False) -> dict:
    """The reinforcement-only hyperparameters made concrete, and batch size and epochs (prompts are answered
    samples_per_prompt times each: fewer per step, and fewer passes, than supervised examples); the rest is
    training_plan's. `json_answers`: the job has a response_format other than text."""

    def auto(key: str) -> bool:
        return hp.get(key) in (None, "auto")

    if auto("batch_size"):
        hp["batch_size"] = max(1, min(d.rl_prompts_per_step, examples))
    if auto("n_epochs"):
        hp["n_epochs"] = d.rl_epochs
    if auto("compute_multiplier"):
        hp["compute_multiplier"] = 1.0
    if auto("eval_samples"):
        hp["eval_samples"] = 1
    if auto("beta"):
        hp["beta"] = DEFAULT_KL_BETA
    if auto("max_completion_tokens"):
        # A JSON answer carries its braces, keys and quotes around what the model says: hone-tiny's 16 tokens cut
        # `{"label": "Billing"}` short (an unparsed answer is a grader error), so at least JSON_ANSWER_TOKENS.
        hp["max_completion_tokens"] = max(d.rl_max_completion_tokens, JSON_ANSWER_TOKENS if json_answers else 0)
    if auto("temperature"):
        hp["temperature"] = d.rl_temperature
    if auto("lr_scheduler"):
        # Each step's answers are new data: the rate stays where it is rather than decaying towards the end (the
        # tickets benchmark gained 5.6 points under the cosine schedule, 11 under a constant one, seed 1).
        hp["lr_scheduler"] = "constant"
    hp.setdefault("reasoning_effort", "default")
    return hp


def samples_per_prompt(compute_multiplier: float) -> int:
    return max(MIN_SAMPLES, min(MAX_SAMPLES, round(BASE_SAMPLES * compute_multiplier)))


def trainer_section(method: dict, graders: GradersSettings) -> Reinforcement:
    section = method["reinforcement"]
    hp = section["hyperparameters"]
    return Reinforcement(
        grader=section["grader"],
        samples_per_prompt=samples_per_prompt(hp["compute_multiplier"]),
        max_completion_tokens=hp["max_completion_tokens"],
        temperature=hp["temperature"],
        kl_beta=hp["beta"],
        eval_samples=hp["eval_samples"],
        model_call_timeout_s=graders.grader_model_timeout_s,
        sandbox=dataclasses.asdict(graders.sandbox_limits()),
        python_processes=graders.grader_processes,
        response_format=response_format(method),
    )


def response_format(method: dict) -> dict | None:
    """The job's answer format as the served model is asked for it (None: free text), normalised."""
    fmt = output_format.parse(method["reinforcement"].get("response_format"), f"{PARAM}.response_format")
    return fmt.to_response_format() if fmt is not None else None


def eval_interval(method: dict) -> int:
    """The job's eval_interval for the trainer (0: the trainer's own, about ten validations a run)."""
    value = method["reinforcement"]["hyperparameters"].get("eval_interval", "auto")
    return 0 if value == "auto" else int(value)


def missing_item_fields(grader: dict, lines, limit: int = MISSING_SHOWN) -> tuple[list[tuple[int, str]], int]:
    """((line, variable) for lines lacking a variable the grader's templates read, at most `limit`; how many in
    all). `lines` are the file's raw lines in order (blank ones count, as the validator numbers them)."""
    wanted = [(ref, templates.parse_path(ref)[1]) for ref in grader_spec.item_references(grader_spec.parse(grader))]
    found: list[tuple[int, str]] = []
    total = 0
    if not wanted:
        return found, total
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row = json.loads(raw)
        for text, path in wanted:
            try:
                templates.lookup({"item": row}, "item", path)
            except templates.TemplateError:
                total += 1
                if len(found) < limit:
                    found.append((number, text))
                break
    return found, total
