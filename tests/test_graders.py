"""Graders in process (hone_kernel/graders): templates, each grader type, the multi formula, the python sandbox's
limits (each one shown to hold), and the shapes of what a grade answers. Model graders here are answered by
`ScriptedModels`, a stand-in for the gateway that replays set replies: what is tested is how a reply is parsed
and counted; tests/test_graders_api.py sends model graders to a real served model through the gateway."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from hone_kernel.graders import formula, spec, templates
from hone_kernel.graders.run import (
    ERROR_FLAGS,
    GradingEnv,
    ModelReply,
    grade,
    parse_label,
    parse_score,
    sample_from_text,
)
from hone_kernel.graders.sandbox import SandboxLimits

GRADER = TypeAdapter(spec.Grader)
LIMITS = SandboxLimits(timeout_s=4, cpu_s=2, memory_bytes=1 << 30)


def run(grader: dict, output: str = "", item: object = None, env: GradingEnv | None = None):
    parsed = GRADER.validate_python(grader)
    return asyncio.run(grade(parsed, sample_from_text(output), {} if item is None else item, env or GradingEnv(LIMITS)))


def check(**fields) -> dict:
    return {"type": "string_check", "name": "check", "operation": "eq", **fields}


# --- templates -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "item", "expected"),
    [
        ("{{item.label}}", {"label": "Billing"}, "Billing"),
        ("{{ item.a.b }}-{{item.a.c[1]}}", {"a": {"b": "x", "c": [1, 2]}}, "x-2"),
        ('{{ item["a key"] }}', {"a key": "v"}, "v"),
        ("{{item.n}} and {{item.obj}}", {"n": 3, "obj": {"k": [True, None]}}, '3 and {"k": [true, null]}'),
        ("no templates {here}", {}, "no templates {here}"),
    ],
)
def test_templates_render_as_openai_writes_them(template, item, expected):
    assert templates.render(template, {"item": item, "sample": {}}) == expected


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ foo.bar }}", "only item and sample"),
        ("{{ item.a b }}", "not a variable path"),
        ("{{ 1 + 2 }}", "not a variable"),
        ("{{ item.a", "not closed"),
    ],
)
def test_a_template_that_is_no_variable_is_refused_at_validation(template, why):
    with pytest.raises(ValidationError) as err:
        GRADER.validate_python(check(input=template, reference="x"))
    assert why in str(err.value)


def test_a_missing_variable_is_an_error_of_the_grade_not_an_empty_string():
    result = run(check(input="{{item.label}}", reference=""), item={"other": 1})
    assert result.reward == 0.0 and result.errors["invalid_variable_error"]
    assert "item has no 'label'" in result.errors["other_error_details"]
    # output_json read from a sample that is not JSON
    result = run(check(input="{{sample.output_json.a}}", reference="x"), output="not json")
    assert result.errors["sample_parse_error"] and not result.errors["invalid_variable_error"]
    assert run(check(input="{{sample.output_json.a}}", reference="x"), output='{"a": "x"}').reward == 1.0


# --- string_check and text_similarity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "text", "reference", "reward"),
    [
        ("eq", "Billing", "Billing", 1.0),
        ("eq", "billing", "Billing", 0.0),
        ("ne", "billing", "Billing", 1.0),
        ("ne", "Billing", "Billing", 0.0),
        ("like", "about Billing here", "Billing", 1.0),
        ("like", "about billing here", "Billing", 0.0),
        ("ilike", "about BILLING here", "billing", 1.0),
        ("ilike", "about shipping", "billing", 0.0),
    ],
)
def test_string_check_operations(operation, text, reference, reward):
    grader = check(operation=operation, input="{{sample.output_text}}", reference="{{item.ref}}")
    assert run(grader, text, {"ref": reference}).reward == reward


METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]


@pytest.mark.parametrize("metric", METRICS)
def test_text_similarity_ranks_identical_above_close_above_unrelated(metric):
    reference = "the quick brown fox jumps over the lazy dog near the river bank"
    close = "the quick brown fox jumped over the lazy dog near the river"
    unrelated = "invoices are paid monthly by wire transfer"

    def score(text: str) -> float:
        grader = {"type": "text_similarity", "name": "sim", "evaluation_metric": metric}
        return run({**grader, "input": "{{sample.output_text}}", "reference": reference}, text).reward

    identical, near, far = score(reference), score(close), score(unrelated)
    assert identical == pytest.approx(1.0, abs=1e-6) or (metric == "meteor" and identical > 0.99)
    assert identical > near > far >= 0.0, (identical, near, far)


def test_cosine_is_refused_while_hone_serves_no_embedding_model():
    with pytest.raises(ValidationError, match="embedding model"):
        GRADER.validate_python(
            {"type": "text_similarity", "name": "c", "input": "a", "reference": "b", "evaluation_metric": "cosine"}
        )


# --- multi -----------------------------------------------------------------------------------------------------


def multi(calculate_output: str) -> dict:
    return {
        "type": "multi",
        "name": "both",
        "graders": {
            "exact": check(input="{{sample.output_text}}", reference="{{item.ref}}"),
            "overlap": {
                "type": "text_similarity",
                "name": "overlap",
                "input": "{{sample.output_text}}",
                "reference": "{{item.ref}} issue",
                "evaluation_metric": "rouge_1",
            },
        },
        "calculate_output": calculate_output,
    }


def test_multi_combines_named_scores_by_its_formula():
    result = run(multi("0.5 * exact + 0.5 * overlap"), "Billing", {"ref": "Billing"})
    assert result.sub_rewards == {"exact": 1.0, "overlap": pytest.approx(2 / 3)}
    assert result.reward == pytest.approx(0.5 + 1 / 3)
    assert run(
        multi("min(exact, overlap) ^ 2 + floor(overlap) - abs(-1) + sqrt(4)"), "Billing", {"ref": "Billing"}
    ).reward == pytest.approx((2 / 3) ** 2 + 0 - 1 + 2)
    response = result.response()
    assert response["sub_rewards"] == response["metadata"]["scores"] == result.sub_rewards


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("exact + missing", "not one of the graders"),
        ("exact.__class__", "may use only"),
        ("__import__('os')", "may use only"),
        ("exact if overlap else 1", "may use only"),
        ("exact +", "does not parse"),
    ],
)
def test_a_formula_is_checked_before_anything_runs(text, why):
    with pytest.raises(ValidationError, match=why):
        GRADER.validate_python(multi(text))


def test_a_formula_that_cannot_be_computed_is_a_formula_error_of_the_grade():
    result = run(multi("exact / (overlap - overlap)"), "Billing", {"ref": "Billing"})
    assert result.errors["formula_parse_error"] and result.reward == 0.0
    assert formula.evaluate("2 ^ 3 - log(1)", {}) == 8.0
    with pytest.raises(formula.FormulaError):
        formula.evaluate("9 ^ 9 ^ 9", {})  # overflows as a float, never computed as a huge integer


# --- model graders: parsing and accounting ---------------------------------------------------------------------


class ScriptedModels:
    """Replays set replies (see the module docstring), recording what each call sent."""

    def __init__(self, *replies: ModelReply):
        self.replies, self.calls = list(replies), []

    async def chat(self, model, messages, params):
        self.calls.append((model, messages, params))
        return self.replies.pop(0)


def score_model(**fields) -> dict:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "hone-tiny",
        "input": [
            {"role": "system", "content": "Score from 0 to 1."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}}"}, "Ref: {{item.ref}}"],
            },
        ],
        **fields,
    }


def test_score_model_renders_its_prompt_and_parses_the_score():
    models = ScriptedModels(ModelReply('{"result": 0.75, "steps": []}', 20, 5))
    params = {"temperature": 0.2, "seed": 7, "max_completions_tokens": 16}
    result = run(score_model(sampling_params=params), "Billing", {"ref": "Billing"}, GradingEnv(LIMITS, models))
    assert result.reward == 0.75 and not result.failed
    model, messages, sent = models.calls[0]
    assert model == "hone-tiny"
    assert messages == [
        {"role": "system", "content": "Score from 0 to 1."},
        {"role": "user", "content": "Answer: Billing\nRef: Billing"},
    ]
    assert sent == {"temperature": 0.2, "seed": 7, "max_tokens": 16}
    response = result.response()
    assert response["metadata"]["token_usage"] == 25 and response["metadata"]["sampled_model_name"] == "hone-tiny"
    assert response["model_grader_token_usage_per_model"]["hone-tiny"]["total_tokens"] == 25


def test_score_and_label_parsing():
    assert parse_score("0.5", 0, 1) == 0.5
    assert parse_score("I'd say 7 out of 10", 0, 10) == 7.0
    assert parse_score('{"result": 3}', 1, 5) == 3.0
    assert parse_score("1.5", 0, 1) is None  # outside the range
    assert parse_score("no idea", 0, 1) is None
    assert parse_label(" Billing\n", ["Billing", "Shipping"]) == "Billing"
    assert parse_label("billing", ["Billing", "Shipping"]) == "Billing"
    assert parse_label('{"result": "Shipping"}', ["Billing", "Shipping"]) == "Shipping"
    assert parse_label("both", ["Billing", "Shipping"]) is None


def test_model_grader_failures_set_their_flags():
    env = GradingEnv(LIMITS, ScriptedModels(ModelReply("no number here", 3, 3)))
    assert run(score_model(), "x", {"ref": "y"}, env).errors["model_grader_parse_error"]
    env = GradingEnv(LIMITS, ScriptedModels(ModelReply("", 3, 0, "content_filter")))
    assert run(score_model(), "x", {"ref": "y"}, env).errors["model_grader_refusal_error"]
    label = {
        "type": "label_model",
        "name": "l",
        "model": "hone-tiny",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
    }
    env = GradingEnv(LIMITS, ScriptedModels(ModelReply("good", 1, 1), ModelReply("bad", 1, 1)))
    assert [run(label, "x", None, env).reward for _ in range(2)] == [1.0, 0.0]
    with pytest.raises(ValidationError, match="passing_labels must be among labels"):
        GRADER.validate_python({**label, "passing_labels": ["great"]})
    with pytest.raises(ValidationError, match="reasoning_effort is not supported"):
        GRADER.validate_python(score_model(sampling_params={"reasoning_effort": "high"}))
    with pytest.raises(ValidationError, match="read text only"):
        GRADER.validate_python(
            score_model(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
        )


# --- python: the sandbox holds ---------------------------------------------------------------------------------


def python(body: str) -> dict:
    return {"type": "python", "name": "py", "source": "def grade(sample, item):\n" + body}


def test_python_grader_scores_with_numpy_and_its_scratch_folder():
    source = (
        "    import numpy as np\n"
        "    open('notes.txt', 'w').write(sample['output_text'])\n"
        "    same = open('notes.txt').read() == item['ref']\n"
        "    return float(np.mean([same, 1.0]))\n"
    )
    assert run(python(source), "Billing", {"ref": "Billing"}).reward == 1.0
    assert run(python(source), "Other", {"ref": "Billing"}).reward == 0.5


@pytest.mark.parametrize(
    ("body", "flag", "says"),
    [
        ("    return len(open('/etc/passwd').read())\n", "python_grader_runtime_error", "no access to '/etc/passwd'"),
        ("    import os\n    return len(os.listdir('/'))\n", "python_grader_runtime_error", "no access to '/'"),
        ("    open('/tmp/escaped.txt', 'w')\n    return 1\n", "python_grader_runtime_error", "no access"),
        (
            "    import socket\n    socket.create_connection(('127.0.0.1', 5432))\n    return 1\n",
            "python_grader_runtime_error",
            "does not allow socket",
        ),
        ("    import os\n    os.fork()\n    return 1\n", "python_grader_runtime_error", "does not allow os.fork"),
        ("    import subprocess\n    return 1\n", "python_grader_runtime_error", "importing subprocess"),
        ("    import ctypes\n    return 1\n", "python_grader_runtime_error", "importing ctypes"),
        (
            "    import resource\n    resource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n    return 1\n",
            "python_grader_runtime_error",
            "resource.setrlimit",
        ),
        ("    return 'high'\n", "python_grader_runtime_error", "must return a finite number"),
        ("    return item['missing']\n", "python_grader_runtime_error", "KeyError"),
        ("    x = bytearray(4 << 30)\n    return 1\n", "python_grader_server_error", "memory"),
        ("    while True:\n        pass\n", "python_grader_server_error", "cpu"),
        ("    import time\n    time.sleep(60)\n", "python_grader_server_error", "timeout"),
        ("    open('big', 'wb').write(b'x' * (32 << 20))\n    return 1\n", "python_grader_server_error", "file_size"),
    ],
)
def test_python_grader_limits_hold(body, flag, says):
    started = time.monotonic()
    result = run(python(body), "x", {})
    assert result.errors[flag] and result.reward == 0.0, result.errors
    details = " ".join(
        str(result.errors.get(k)) for k in ("python_grader_runtime_error_details", "python_grader_server_error_type")
    )
    assert says in details, details
    assert time.monotonic() - started < LIMITS.timeout_s + 3


def test_below_the_audit_hook_there_is_no_network():
    """Isolation that does not rest on the audit hook: the sandbox's first steps alone (no hook installed) leave a
    process that cannot reach PostgreSQL on loopback (a network namespace without interfaces)."""
    probe = (
        "import sys, socket; sys.path.insert(0, sys.argv[1]); import sandbox_child as s\n"
        "print(s.drop_privileges())\n"
        "try:\n    socket.create_connection(('127.0.0.1', 5432), timeout=2); print('connected')\n"
        "except OSError as e:\n    print('no network:', e)\n"
    )
    folder = Path(spec.__file__).parent
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(folder)], capture_output=True, text=True, timeout=30)
    isolation, network = out.stdout.splitlines()
    assert "netns" in isolation, out  # this machine's kernel allows it; CI runs here
    assert network.startswith("no network:"), network
    # the same connection from here works: it is the namespace that cuts it
    socket.create_connection(("127.0.0.1", 5432), timeout=2).close()


def test_python_source_is_checked_at_validation():
    with pytest.raises(ValidationError, match="must define"):
        GRADER.validate_python({"type": "python", "name": "p", "source": "x = 1"})
    with pytest.raises(ValidationError, match="does not parse"):
        GRADER.validate_python({"type": "python", "name": "p", "source": "def grade(:"})
    with pytest.raises(ValidationError, match="image_tag is not supported"):
        GRADER.validate_python({**python("    return 1\n"), "image_tag": "2025-05-08"})


def test_every_error_flag_of_openai_is_answered():
    response = run(check(input="a", reference="a")).response()
    assert set(ERROR_FLAGS) <= set(response["metadata"]["errors"])
    assert not any(response["metadata"]["errors"][f] for f in ERROR_FLAGS)
    assert list(response) == ["reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"]
