"""A reinforcement job's `evaluation`, in process (an AppContext over SQLite, no server): what `plan` keeps at
creation (its prompt lines as rows, its own grader as the default criterion, compared by mean reward), what it
refuses (a prompts file for another method, a file in another format, criteria reading item fields the rows lack),
how a prompt line becomes an eval item, and the summary's mean reward. The whole flow through a server is in
tests/test_job_evaluation.py (fake trainer and engine) and tests/test_rft_api.py (the real trainer and engine)."""

from __future__ import annotations

import json

import pytest

from hone_kernel.graders import templates
from service import job_creation, job_evaluation, job_evaluation_rows
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import Eval, EvalOutputItem, EvalRun, File, Job, Project, TunedModel
from service.errors import InvalidRequest
from service.eval_runner import sampling_messages
from service.schemas import CreateFineTuningJob
from service.settings import Settings

PRINCIPAL = ProjectPrincipal(project_id="proj_e", project_slug="e")
LABELS = ["Billing", "Sales"]
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}


def prompts(n: int, **extra) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Ticket {i}: my card"}], "label": LABELS[i % 2], **extra}
        for i in range(n)
    ]


@pytest.fixture
def ctx(tmp_path):
    context = AppContext.build(Settings(data_dir=tmp_path, admin_api_key="adm"))
    with context.db.write() as session:
        session.add(Project(id=PRINCIPAL.project_id, name="e", slug="e", created_at=0))
    yield context
    context.db.dispose()


def upload(ctx: AppContext, file_id: str, rows: list[dict], fmt: str = "openai_reinforcement", blank=()) -> str:
    """A processed fine-tune file of `rows` (blank lines after the rows numbered in `blank`)."""
    data = b"".join(json.dumps(r).encode() + b"\n" + (b"\n" if i in blank else b"") for i, r in enumerate(rows))
    ctx.storage.put_bytes(f"files/{file_id}", data)
    with ctx.db.write() as session:
        session.add(
            File(
                id=file_id,
                project_id=PRINCIPAL.project_id,
                filename=f"{file_id}.jsonl",
                purpose="fine-tune",
                bytes=len(data),
                created_at=0,
                status="processed",
                storage_key=f"files/{file_id}",
                dataset_format=fmt,
                example_count=len(rows),
            )
        )
    return file_id


def rft(training: str, evaluation: dict, grader: dict = EXACT, **fields) -> CreateFineTuningJob:
    return CreateFineTuningJob.model_validate(
        {
            "model": "hone-tiny",
            "training_file": training,
            "seed": 7,
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader}},
            "evaluation": evaluation,
            **fields,
        }
    )


def refused(ctx: AppContext, body: CreateFineTuningJob) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        job_creation.new_job(ctx, PRINCIPAL, body)
    return err.value


def test_a_reinforcement_job_is_evaluated_on_its_prompts_by_its_own_grader(ctx):
    grader = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": EXACT, "near": {**EXACT, "operation": "ilike"}},
        "calculate_output": "(exact + near) / 2",
    }
    training, valid = upload(ctx, "file-t", prompts(12)), upload(ctx, "file-v", prompts(3))
    job = job_creation.new_job(ctx, PRINCIPAL, rft(training, {}, grader, validation_file=valid))
    ev = job.evaluation
    assert (ev["source"], ev["file"], ev["holdout"]) == ("validation_file", valid, None)
    assert ev["testing_criteria"] == [grader]  # the job's grader, multi included
    assert ev["metric"] == "mean_reward" and ev["compare_to"] == "hone-tiny"
    assert ev["max_completion_tokens"] is None  # the job's own, once scheduling resolved it

    # No validation file: a slice of the training prompts is held out (and not trained on), as for other jobs.
    job = job_creation.new_job(ctx, PRINCIPAL, rft(upload(ctx, "file-t20", prompts(20)), {"max_completion_tokens": 9}))
    assert job.evaluation["source"] == "holdout" and len(job.evaluation["holdout"]) == 2
    assert job.evaluation["max_completion_tokens"] == 9  # asked for explicitly: kept

    # Criteria given explicitly may read the line's own fields; they are compared by pass rate.
    criterion = {**EXACT, "name": "label_is_given", "input": "{{ item.label }}", "operation": "ne"}
    job = job_creation.new_job(ctx, PRINCIPAL, rft(training, {"testing_criteria": [criterion]}))
    assert job.evaluation["testing_criteria"] == [criterion] and job.evaluation["metric"] == "pass_rate"


def test_criteria_reading_a_field_the_rows_lack_are_refused_naming_it(ctx):
    training = upload(ctx, "file-t", prompts(12))
    reads_reference = {**EXACT, "name": "reference", "reference": "{{ item.reference }}"}
    err = refused(ctx, rft(training, {"testing_criteria": [EXACT, reads_reference]}))
    assert err.param == "evaluation.testing_criteria[1]"
    assert "{{item.reference}}" in err.message and "line 1 of file-t" in err.message

    # Only the rows used count: the first max_rows lines of an evaluation file (line 6 lacks the label here).
    rows = prompts(8)
    del rows[5]["label"]
    partial = upload(ctx, "file-partial", rows, blank=(1,))
    assert job_creation.new_job(ctx, PRINCIPAL, rft(training, {"file": partial, "max_rows": 5})).evaluation
    # An evaluation file of its own is read for the job's grader too (the validation loop reads only the job's).
    err = refused(ctx, rft(training, {"file": partial}))
    assert err.param == "evaluation.file" and "{{item.label}}" in err.message and "line 7 of" in err.message
    # A held-out slice may be any line of the training file: all are read.
    training_rows = prompts(20)
    del training_rows[17]["label"]
    err = refused(ctx, rft(upload(ctx, "file-t20", training_rows), {"testing_criteria": [EXACT]}))
    assert err.param == "evaluation.testing_criteria[0]" and "line 18 of" in err.message


def test_a_prompts_file_is_refused_for_other_methods_and_other_formats_for_reinforcement(ctx):
    chat = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(12)
    ]
    chat_file, prompt_file = upload(ctx, "file-chat", chat, "openai_chat"), upload(ctx, "file-p", prompts(12))
    supervised = CreateFineTuningJob.model_validate(
        {"model": "hone-tiny", "training_file": chat_file, "evaluation": {"file": prompt_file}}
    )
    err = refused(ctx, supervised)
    assert err.param == "evaluation.file"
    assert "openai_reinforcement" in err.message and "Only a reinforcement job" in err.message
    distill = CreateFineTuningJob.model_validate(
        {
            "model": "hone-tiny",
            "training_file": prompt_file,
            "method": {"type": "distillation", "distillation": {"teacher": "hone-tiny"}},
            "evaluation": {},
        }
    )
    err = refused(ctx, distill)
    assert err.param == "evaluation.file" and "Only a reinforcement job" in err.message
    err = refused(ctx, rft(prompt_file, {"file": chat_file}))
    assert err.param == "evaluation.file" and "in the openai_chat format" in err.message


def test_a_continued_reinforcement_job_compares_with_the_base_or_with_its_parent(ctx):
    parent = "ft:hone-tiny:e:first:ftjob-parent"
    ctx.storage.put_bytes(
        "models/parent/adapter_config.json",
        json.dumps({"target_modules": ["q_proj", "v_proj"], "r": 8, "lora_alpha": 16}).encode(),
    )
    training = upload(ctx, "file-t", prompts(12))
    with ctx.db.write() as session:
        session.add(
            Job(
                id="ftjob-parent",
                project_id=PRINCIPAL.project_id,
                model="hone-tiny",
                base_model="hone-tiny",
                status="succeeded",
                created_at=0,
                training_file=training,
                method={"type": "supervised", "supervised": {"hyperparameters": {}}},
                seed=1,
                result_files=[],
            )
        )
        session.flush()
        session.add(
            TunedModel(
                id=parent,
                project_id=PRINCIPAL.project_id,
                job_id="ftjob-parent",
                base_model="hone-tiny",
                created_at=0,
                storage_prefix="models/parent/",
            )
        )
    base = job_creation.new_job(ctx, PRINCIPAL, rft(training, {}, model=parent))
    assert base.evaluation["compare_to"] == "hone-tiny"  # "base" is the root base model, not the parent
    against_parent = job_creation.new_job(ctx, PRINCIPAL, rft(training, {"compare_to": parent}, model=parent))
    assert against_parent.evaluation["compare_to"] == parent


def test_a_prompt_line_is_an_item_graded_as_in_training():
    lines = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Ticket 0"}]}], "label": "Billing"},
        {"messages": [{"role": "system", "content": "Label it."}, {"role": "user", "content": "T1"}], "label": "Sales"},
        {"messages": [{"role": "user", "content": "T2"}], "label": "Billing", "meta": {"tier": [1, 2]}},
    ]
    raw = [json.dumps(line).encode() for line in lines]
    rows = job_evaluation_rows.rows_of(raw, "openai_reinforcement", None, 10)
    # The whole line is the item, its messages the prompt with content parts joined to text (as the trainer renders).
    assert rows[0] == {"messages": [{"role": "user", "content": "Ticket 0"}], "label": "Billing"}
    assert rows[1:] == lines[1:]
    ref = {"type": "item_reference", "item_reference": "item.messages"}
    assert sampling_messages(rows[1], ref) == lines[1]["messages"]
    assert templates.render("{{ item.label }} {{ item.meta.tier[1] }}", {"item": rows[2]}) == "Billing 2"

    # Held-out rows are the ordinals among non-blank lines (as the trainer skips them); max_rows bounds the rest.
    spaced = [raw[0], b"", b"  ", raw[1], raw[2]]
    assert job_evaluation_rows.rows_of(spaced, "openai_reinforcement", [1, 2], 10) == rows[1:]
    assert [n for n, _ in job_evaluation_rows.selected_lines(spaced, [2])] == [5]
    assert job_evaluation_rows.rows_of(spaced, "openai_reinforcement", None, 2) == rows[:2]

    schema = job_evaluation_rows.item_schema(True, [{**EXACT, "input": "{{ item.meta.tier[0] }}"}])
    assert schema["required"] == ["messages", "meta", "label"]
    assert job_evaluation_rows.item_schema(False, [EXACT]) == job_evaluation_rows.ITEM_SCHEMA


def test_the_summary_of_a_job_graded_by_its_grader_is_its_mean_reward(ctx):
    with ctx.db.write() as session:
        session.add(
            Eval(
                id="eval_1",
                project_id=PRINCIPAL.project_id,
                name="e",
                meta={},
                data_source_config={},
                testing_criteria=[EXACT],
                created_at=0,
                updated_at=0,
            )
        )
        session.flush()
        run = EvalRun(
            id="evalrun_1",
            eval_id="eval_1",
            project_id=PRINCIPAL.project_id,
            name="tuned",
            meta={},
            data_source={},
            model="ft:x",
            status="completed",
            result_counts={"total": 4, "passed": 1, "failed": 2, "errored": 1},
            per_testing_criteria_results=[],
            per_model_usage=[],
            created_at=0,
            updated_at=0,
        )
        session.add(run)
        session.flush()
        scores = [(0.75, None), (1.0, None), (0.25, None), (0.0, "the grader failed")]
        for i, (score, error) in enumerate(scores):
            result = {"name": "both", "type": "multi", "score": score, "passed": score >= 1, "sample": None}
            session.add(
                EvalOutputItem(
                    id=f"outputitem_{i}",
                    run_id=run.id,
                    eval_id="eval_1",
                    project_id=PRINCIPAL.project_id,
                    datasource_item_id=i,
                    datasource_item={},
                    results=[{**result, "error": error} if error else result],
                    sample={},
                    status="error" if error else "pass",
                    created_at=0,
                )
            )
        session.flush()
        rewarded = job_evaluation._score(session, run, "both")
        plain = job_evaluation._score(session, run)
    # The errored row counts 0, as a failed grade does in training: (0.75 + 1 + 0.25 + 0) / 4.
    assert rewarded["score"] == rewarded["reward_mean"] == 0.5
    assert rewarded["aggregates"]["both"]["AVERAGE"] == 0.666667  # the graded rows' own average
    assert plain["score"] == 0.25 and "reward_mean" not in plain  # the pass rate


def test_a_reinforcement_evaluation_answers_at_the_jobs_own_length():
    job = Job(method={"type": "reinforcement", "reinforcement": {"hyperparameters": {"max_completion_tokens": 16}}})
    assert job_evaluation._job_max_completion_tokens(job) == 16
    unresolved = Job(method={"type": "reinforcement", "reinforcement": {"hyperparameters": {}}})
    assert job_evaluation._job_max_completion_tokens(unresolved) == job_evaluation.DEFAULT_MAX_COMPLETION_TOKENS


def test_the_cli_shows_mean_rewards_side_by_side():
    from hone.cli.jobs import _evaluation_lines
    from hone.types import FineTuningJob

    side = {"passed": 0, "failed": 3, "errored": 0, "total": 3}
    evaluation = {
        "status": "completed",
        "source": "validation_file",
        "compare_to": "hone-tiny",
        "metric": "mean_reward",
        "results": {
            "tuned": {**side, "model": "ft:hone-tiny:e::ftjob-1", "score": 0.75, "reward_mean": 0.75},
            "compare": {**side, "model": "hone-tiny", "score": 0.25, "reward_mean": 0.25},
        },
        "improvement": 0.5,
    }
    job = FineTuningJob(
        id="ftjob-1", created_at=0, status="succeeded", model="hone-tiny", training_file="f", evaluation=evaluation
    )
    lines = _evaluation_lines(job)
    assert lines[1].split()[:2] == ["model", "reward"]
    assert lines[2].split()[:3] == ["tuned", "ft:hone-tiny:e::ftjob-1", "0.750"]
    assert lines[3].split()[:3] == ["compared", "hone-tiny", "0.250"]
    assert lines[4] == "  improvement +0.500 mean reward over hone-tiny"
