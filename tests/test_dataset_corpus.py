"""A corpus of malformed fine-tuning files, each uploaded to a real server over HTTP.

As DESIGN.md says, a malformed file is stored whole and ends with status `error`, its problems
(line and field) in `status_details` and, as data, in `dataset.errors`. Creating a job with it
answers 400 with OpenAI's error envelope naming the line and field (as `line`/`field` keys and in
the message). Files that validate but that a job cannot use (too few examples, a format the
method cannot train on) are refused at job creation with the right param. Never a 5xx.

The corpus runs against one SQLite + filesystem server started for this module; one test checks
on PostgreSQL + S3 (moto) that an upload cut off mid-stream leaves no object and no row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import HoneServer, PostgresDatabase, chat_dataset, chat_line, jsonl

# --- building blocks -------------------------------------------------------------------------

U = {"role": "user", "content": "What is 2+2?"}
A = {"role": "assistant", "content": "4"}
S = {"role": "system", "content": "You are a calculator."}
GOOD = chat_line()
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
PREF = {
    "input": {"messages": [U]},
    "preferred_output": [{"role": "assistant", "content": "4"}],
    "non_preferred_output": [{"role": "assistant", "content": "5"}],
}
GEMINI = {
    "contents": [{"role": "user", "parts": [{"text": "What is 2+2?"}]}, {"role": "model", "parts": [{"text": "4"}]}]
}
BOM = b"\xef\xbb\xbf"
MiB = 1 << 20


def chat(*messages, **extra) -> dict:
    return {"messages": list(messages), **extra}


def asst(**fields) -> dict:
    return {**A, **fields}


def tool_turns(call, **tool_msg) -> dict:
    """user → assistant tool call → tool result → assistant answer, with the given call and tool message."""
    return chat(
        U, {"role": "assistant", "tool_calls": call}, {"role": "tool", "content": "4", **tool_msg}, A, tools=TOOLS
    )


def lines(*rows, eol: bytes = b"\n", final_eol: bool = True) -> bytes:
    """Rows are dicts (dumped as JSON) or raw bytes (used as they are)."""
    raw = [r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode() for r in rows]
    return eol.join(raw) + (eol if final_eol else b"")


def gemini(*turns, **extra) -> dict:
    return {"contents": list(turns), **extra}


def turn(role, *parts) -> dict:
    return {"role": role, "parts": list(parts) if parts else [{"text": "hi"}]}


@dataclass
class Bad:
    """A file the upload must reject; (line, field, code) is the first error it must report."""

    id: str
    data: bytes | Callable[[], bytes]
    line: int
    field: str
    code: str
    also: list[tuple[int, str, str]] = field(default_factory=list)  # further errors it must list

    def content(self) -> bytes:
        return self.data() if callable(self.data) else self.data


def _ten_mb_line() -> bytes:
    return lines(
        GOOD,
        {"messages": [U, {"role": "assistant", "content": "x" * (10 * MiB)}]},
        GOOD,
        {"messages": [U, {"role": "robot", "content": "x"}]},
    )


REJECTED = [
    # --- not JSON, not an object, encodings, blank lines ------------------------------------
    Bad(
        "json-truncated", lines(GOOD, b'{"messages": [{"role": "user", "content": "hi"}', GOOD), 2, "$", "invalid_json"
    ),
    Bad(
        "json-trailing-comma",
        lines(b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},]}'),
        1,
        "$",
        "invalid_json",
    ),
    Bad("json-single-quotes", lines(GOOD, GOOD, b"{'messages': []}"), 3, "$", "invalid_json"),
    Bad("json-two-objects-one-line", lines(GOOD, json.dumps(GOOD).encode() * 2), 2, "$", "invalid_json"),
    Bad("json-unquoted-key", lines(b"{messages: []}"), 1, "$", "invalid_json"),
    Bad(
        "nan-constant",
        lines(
            GOOD,
            b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": NaN}]}',
        ),
        2,
        "$",
        "invalid_json",
    ),
    Bad("infinity-constant", lines(b'{"text": "a", "score": Infinity}'), 1, "$", "invalid_json"),
    Bad("json-nested-too-deeply", lines(GOOD, b"[" * 100_000), 2, "$", "invalid_json"),
    Bad("line-is-array", lines(GOOD, [GOOD]), 2, "$", "data_type"),
    Bad("line-is-string", lines(b'"just a string"'), 1, "$", "data_type"),
    Bad("line-is-null", lines(GOOD, GOOD, b"null"), 3, "$", "data_type"),
    Bad("line-is-number", lines(b"42", GOOD), 1, "$", "data_type"),
    Bad("empty-file", b"", 1, "$", "empty_file"),
    Bad("only-newline", b"\n", 1, "$", "blank_line"),
    Bad("blank-line-middle", lines(GOOD, b"", GOOD, GOOD), 2, "$", "blank_line"),
    Bad("blank-line-trailing", chat_dataset(3) + b"\n", 4, "$", "blank_line"),
    Bad("whitespace-only-line", lines(GOOD, GOOD, b" \t ", GOOD), 3, "$", "blank_line"),
    Bad(
        "crlf-error-on-line-4",
        lines(GOOD, GOOD, GOOD, chat({"role": "human", "content": "q"}, A), GOOD, eol=b"\r\n"),
        4,
        "messages[0].role",
        "unrecognized_role",
    ),
    Bad("crlf-blank-line-3", lines(GOOD, GOOD, b"", GOOD, eol=b"\r\n"), 3, "$", "blank_line"),
    Bad(
        "utf8-bom-error-on-line-2",
        BOM + lines(GOOD, chat(U, asst(weight=2)), GOOD),
        2,
        "messages[1].weight",
        "invalid_weight",
    ),
    Bad("utf8-bom-twice", BOM + BOM + lines(GOOD), 1, "$", "invalid_json"),
    Bad("utf16-le-bom", b"\xff\xfe" + lines(GOOD, GOOD).decode().encode("utf-16-le"), 1, "$", "invalid_encoding"),
    Bad("utf16-be-bom", b"\xfe\xff" + lines(GOOD).decode().encode("utf-16-be"), 1, "$", "invalid_encoding"),
    Bad("invalid-utf8-bytes", lines(GOOD, GOOD, b'{"text": "\xff\xfe\xfd"}'), 3, "$", "invalid_encoding"),
    Bad(
        "latin1-not-utf8",
        lines(GOOD, json.dumps(chat_line("caf\u00e9?", "oui"), ensure_ascii=False).encode("latin-1")),
        2,
        "$",
        "invalid_encoding",
    ),
    Bad("line-10mb", _ten_mb_line, 2, "$", "line_too_long", also=[(4, "messages[1].role", "unrecognized_role")]),
    # --- format detection ---------------------------------------------------------------------
    Bad("unrecognized-format", lines({"question": "2+2?", "answer": "4"}), 1, "$", "unrecognized_format"),
    Bad(
        "mixed-chat-then-prompt-completion", lines(GOOD, {"prompt": "2+2=", "completion": "4"}), 2, "$", "mixed_formats"
    ),
    Bad("mixed-gemini-then-chat", lines(GEMINI, GEMINI, GOOD), 3, "$", "mixed_formats"),
    Bad("mixed-pairs-then-raw-text", lines({"input": "a", "output": "b"}, {"text": "c"}), 2, "$", "mixed_formats"),
    # --- OpenAI chat --------------------------------------------------------------------------
    Bad("messages-null", lines(GOOD, {"messages": None}), 2, "messages", "missing_messages_list"),
    Bad("messages-empty", lines({"messages": []}), 1, "messages", "missing_messages_list"),
    Bad("messages-string", lines(GOOD, {"messages": "What is 2+2? 4"}), 2, "messages", "missing_messages_list"),
    Bad("messages-object", lines({"messages": {"0": U, "1": A}}), 1, "messages", "missing_messages_list"),
    Bad("message-not-object", lines(chat("What is 2+2?", A)), 1, "messages[0]", "invalid_type"),
    Bad("message-missing-role", lines(GOOD, chat({"content": "q"}, A)), 2, "messages[0].role", "message_missing_key"),
    Bad(
        "role-unknown", lines(chat(S, {"role": "human", "content": "q"}, A)), 1, "messages[1].role", "unrecognized_role"
    ),
    Bad("role-not-string", lines(chat(U, {"role": 1, "content": "4"})), 1, "messages[1].role", "unrecognized_role"),
    Bad(
        "role-wrong-case", lines(chat({"role": "User", "content": "q"}, A)), 1, "messages[0].role", "unrecognized_role"
    ),
    Bad("content-number", lines(chat({"role": "user", "content": 4}, A)), 1, "messages[0].content", "invalid_type"),
    Bad(
        "content-missing", lines(GOOD, chat(U, {"role": "assistant"})), 2, "messages[1].content", "message_missing_key"
    ),
    Bad("content-empty-assistant", lines(chat(U, asst(content="  "))), 1, "messages[1].content", "missing_content"),
    Bad(
        "content-part-unknown-type",
        lines(chat({"role": "user", "content": [{"type": "audio", "data": "x"}]}, A)),
        1,
        "messages[0].content[0].type",
        "invalid_content_part",
    ),
    Bad(
        "image-in-assistant",
        lines(chat(U, asst(content=[{"type": "image_url", "image_url": {"url": "x"}}]))),
        1,
        "messages[1].content[0].type",
        "invalid_content_part",
    ),
    Bad(
        "image-in-user",
        lines(chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, A)),
        1,
        "messages[0].content[0].image_url.url",
        "unsupported_image_source",
    ),
    Bad("no-assistant-turn", lines(GOOD, chat(S, U)), 2, "messages", "example_missing_assistant_message"),
    Bad("weight-2", lines(GOOD, chat(U, asst(weight=2))), 2, "messages[1].weight", "invalid_weight"),
    Bad("weight-minus-1", lines(chat(U, asst(weight=-1))), 1, "messages[1].weight", "invalid_weight"),
    Bad("weight-0.5", lines(chat(U, asst(weight=1), U, asst(weight=0.5))), 1, "messages[3].weight", "invalid_weight"),
    Bad("weight-string-1", lines(GOOD, GOOD, chat(U, asst(weight="1"))), 3, "messages[1].weight", "invalid_weight"),
    Bad("weight-true", lines(chat(U, asst(weight=True))), 1, "messages[1].weight", "invalid_weight"),
    Bad("weight-1.0", lines(chat(U, asst(weight=1.0))), 1, "messages[1].weight", "invalid_weight"),
    Bad("weight-on-user", lines(chat({**U, "weight": 1}, A)), 1, "messages[0].weight", "invalid_weight"),
    Bad("weight-on-system", lines(GOOD, chat({**S, "weight": 0}, U, A)), 2, "messages[0].weight", "invalid_weight"),
    Bad("all-weights-zero", lines(chat(U, asst(weight=0), U, asst(weight=0))), 1, "messages", "no_trainable_message"),
    Bad(
        "unrecognized-top-level-key",
        lines(GOOD, {**GOOD, "metadata": {"source": "x"}}),
        2,
        "metadata",
        "unrecognized_key",
    ),
    Bad(
        "unrecognized-message-key",
        lines(chat({**U, "speaker": "bob"}, A)),
        1,
        "messages[0].speaker",
        "message_unrecognized_key",
    ),
    Bad(
        "tool-message-without-tool-call-id",
        lines(tool_turns([TOOL_CALL])),
        1,
        "messages[2].tool_call_id",
        "message_missing_key",
    ),
    Bad(
        "tool-call-id-not-string",
        lines(tool_turns([TOOL_CALL], tool_call_id=1)),
        1,
        "messages[2].tool_call_id",
        "message_missing_key",
    ),
    Bad(
        "tool-calls-not-array",
        lines(tool_turns(TOOL_CALL, tool_call_id="call_1")),
        1,
        "messages[1].tool_calls",
        "invalid_type",
    ),
    Bad(
        "tool-calls-empty",
        lines(GOOD, tool_turns([], tool_call_id="call_1")),
        2,
        "messages[1].tool_calls",
        "invalid_type",
    ),
    Bad(
        "tool-call-missing-id",
        lines(tool_turns([{"type": "function", "function": TOOL_CALL["function"]}], tool_call_id="call_1")),
        1,
        "messages[1].tool_calls[0].id",
        "missing_key",
    ),
    Bad(
        "tool-call-missing-function",
        lines(tool_turns([{"id": "call_1", "type": "function"}], tool_call_id="call_1")),
        1,
        "messages[1].tool_calls[0].function",
        "missing_key",
    ),
    Bad(
        "tool-call-missing-name",
        lines(tool_turns([{"id": "call_1", "function": {"arguments": "{}"}}], tool_call_id="call_1")),
        1,
        "messages[1].tool_calls[0].function.name",
        "missing_key",
    ),
    Bad(
        "tool-call-arguments-object",
        lines(
            tool_turns([{"id": "call_1", "function": {"name": "add", "arguments": {"a": 2}}}], tool_call_id="call_1")
        ),
        1,
        "messages[1].tool_calls[0].function.arguments",
        "invalid_type",
    ),
    Bad(
        "tool-calls-on-user",
        lines(chat({**U, "tool_calls": [TOOL_CALL]}, A)),
        1,
        "messages[0].tool_calls",
        "invalid_key",
    ),
    Bad("tools-not-array", lines(chat(U, A, tools={"type": "function"})), 1, "tools", "invalid_type"),
    Bad(
        "tool-definition-without-function",
        lines(GOOD, chat(U, A, tools=[{"type": "function"}])),
        2,
        "tools[0]",
        "invalid_tool",
    ),
    Bad(
        "parallel-tool-calls-not-boolean",
        lines(chat(U, A, parallel_tool_calls="yes")),
        1,
        "parallel_tool_calls",
        "invalid_type",
    ),
    # --- OpenAI preference ---------------------------------------------------------------------
    Bad(
        "pref-missing-non-preferred-output",
        lines(PREF, {k: v for k, v in PREF.items() if k != "non_preferred_output"}),
        2,
        "non_preferred_output",
        "missing_key",
    ),
    Bad(
        "pref-two-preferred-outputs", lines({**PREF, "preferred_output": [A, A]}), 1, "preferred_output", "invalid_type"
    ),
    Bad("pref-output-not-array", lines({**PREF, "non_preferred_output": A}), 1, "non_preferred_output", "invalid_type"),
    Bad(
        "pref-input-ends-with-assistant",
        lines(PREF, PREF, {**PREF, "input": {"messages": [U, A]}}),
        3,
        "input.messages[1].role",
        "invalid_input_messages",
    ),
    Bad(
        "pref-input-without-messages",
        lines({**PREF, "input": {"prompt": "2+2?"}}),
        1,
        "input.prompt",
        "unrecognized_key",
        also=[(1, "input.messages", "missing_messages_list")],
    ),
    Bad(
        "pref-output-from-user",
        lines({**PREF, "preferred_output": [U]}),
        1,
        "preferred_output[0].role",
        "unrecognized_role",
    ),
    Bad(
        "pref-canonical-and-alias",
        lines({**PREF, "preferred_completion": [A]}),
        1,
        "preferred_completion",
        "duplicate_key",
    ),
    # --- Vertex / Gemini ----------------------------------------------------------------------
    Bad(
        "gemini-role-assistant",
        lines(GEMINI, gemini(turn("user"), turn("assistant"))),
        2,
        "contents[1].role",
        "unrecognized_role",
    ),
    # A first line ending with the user's turn makes a prompts file (distillation's): these follow an example.
    Bad("gemini-no-model-turn", lines(GEMINI, gemini(turn("user"), turn("user"))), 2, "contents", "missing_model_turn"),
    Bad(
        "gemini-non-text-part",
        lines(gemini(turn("user", {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}), turn("model"))),
        1,
        "contents[0].parts[0].inlineData.data",
        "invalid_image_format",
    ),
    Bad(
        "gemini-empty-parts",
        lines(GEMINI, GEMINI, gemini(turn("user"), {"role": "model", "parts": []})),
        3,
        "contents[1].parts",
        "missing_content",
    ),
    Bad(
        "gemini-last-turn-user",
        lines(GEMINI, gemini(turn("user"), turn("model"), turn("user"))),
        2,
        "contents[2].role",
        "invalid_last_turn",
    ),
    Bad(
        "gemini-prompts-line-with-answer",
        lines(gemini(turn("user")), GEMINI),
        2,
        "contents[1].role",
        "invalid_prompt",
    ),
    Bad("gemini-contents-empty", lines(gemini()), 1, "contents", "missing_content"),
    Bad(
        "gemini-text-not-string",
        lines(gemini(turn("user"), turn("model", {"text": 4}))),
        1,
        "contents[1].parts[0].text",
        "invalid_type",
    ),
    Bad(
        "gemini-system-instruction-string",
        lines({**GEMINI, "systemInstruction": "Be brief."}),
        1,
        "systemInstruction",
        "invalid_type",
    ),
    Bad(
        "gemini-turn-not-object",
        lines(GEMINI, gemini("hi", turn("model"), turn("user"))),
        2,
        "contents[0]",
        "invalid_type",
        also=[(2, "contents[2].role", "invalid_last_turn")],
    ),
    # --- Vertex legacy, pairs, prompt/completion, raw text --------------------------------------
    Bad("vertex-legacy-missing-output-text", lines({"input_text": "2+2?"}), 1, "output_text", "missing_key"),
    Bad(
        "vertex-legacy-missing-input-text",
        lines({"input_text": "a", "output_text": "b"}, {"output_text": "4"}),
        2,
        "input_text",
        "missing_key",
    ),
    Bad(
        "vertex-legacy-empty-input-text",
        lines({"input_text": "", "output_text": "4"}),
        1,
        "input_text",
        "missing_content",
    ),
    Bad("pairs-missing-output", lines({"input": "a", "output": "b"}, {"input": "2+2?"}), 2, "output", "missing_key"),
    Bad(
        "pairs-instruction-missing-output",
        lines({"instruction": "Add", "input": "2 and 2"}),
        1,
        "output",
        "missing_key",
    ),
    Bad("pairs-output-not-string", lines({"input": "2+2?", "output": 4}), 1, "output", "invalid_type"),
    Bad("pairs-instruction-empty", lines({"instruction": " ", "output": "4"}), 1, "instruction", "missing_content"),
    Bad("prompt-completion-missing-completion", lines({"prompt": "2+2="}), 1, "completion", "missing_key"),
    Bad(
        "prompt-completion-missing-prompt",
        lines({"prompt": "a", "completion": "b"}, {"completion": "4"}),
        2,
        "prompt",
        "missing_key",
    ),
    Bad(
        "prompt-completion-empty-completion",
        lines({"prompt": "2+2=", "completion": ""}),
        1,
        "completion",
        "missing_content",
    ),
    Bad(
        "prompt-completion-extra-key",
        lines({"prompt": "2+2=", "completion": "4", "label": 1}),
        1,
        "label",
        "unrecognized_key",
    ),
    Bad("raw-text-number", lines({"text": "ok"}, {"text": 42}), 2, "text", "invalid_type"),
    Bad("raw-text-null", lines({"text": None}), 1, "text", "invalid_type"),
    Bad("raw-text-empty", lines({"text": "ok"}, {"text": ""}), 2, "text", "missing_content"),
    # --- a single error deep in an otherwise good file ------------------------------------------
    Bad(
        "error-on-line-15",
        lines(
            *[chat_line(f"q{i}", f"a{i}") for i in range(14)],
            chat(U, asst(weight=-1)),
            *[chat_line(f"q{i}", f"a{i}") for i in range(5)],
        ),
        15,
        "messages[1].weight",
        "invalid_weight",
    ),
    Bad(
        "error-on-line-15-no-final-newline",
        lines(
            *[{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(14)],
            {"prompt": "p", "completion": None},
            final_eol=False,
        ),
        15,
        "completion",
        "invalid_type",
    ),
]


@dataclass
class Unusable:
    """A file the upload accepts but job creation must refuse."""

    id: str
    data: bytes
    format: str
    examples: int
    method: dict | None
    param: str
    code: str
    validation: bytes | None = None  # when set, `data` is fine and this validation file is the problem


def _pref_rows(n: int) -> bytes:
    return jsonl([PREF] * n)


UNUSABLE = [
    Unusable("too-few-examples-3", chat_dataset(3), "openai_chat", 3, None, "training_file", "invalid_n_examples"),
    Unusable("too-few-examples-9", chat_dataset(9), "openai_chat", 9, None, "training_file", "invalid_n_examples"),
    Unusable(
        "too-few-examples-crlf-bom",
        BOM + chat_dataset(2).replace(b"\n", b"\r\n"),
        "openai_chat",
        2,
        None,
        "training_file",
        "invalid_n_examples",
    ),
    Unusable(
        "too-few-preference-examples-dpo",
        _pref_rows(4),
        "openai_preference",
        4,
        {"type": "dpo"},
        "training_file",
        "invalid_n_examples",
    ),
    Unusable(
        "preference-file-supervised",
        _pref_rows(12),
        "openai_preference",
        12,
        None,
        "training_file",
        "invalid_training_file",
    ),
    Unusable(
        "gemini-prompts-file-supervised",  # prompts with no answers: distillation's (a teacher writes them)
        lines(*[gemini(turn("user"))] * 12),
        "vertex_prompts",
        12,
        None,
        "training_file",
        "invalid_training_file",
    ),
    Unusable(
        "gemini-prompts-file-reinforcement",  # no grader fields in a Gemini line: reinforcement takes OpenAI prompts
        lines(*[gemini(turn("user"))] * 12),
        "vertex_prompts",
        12,
        {
            "type": "reinforcement",
            "reinforcement": {
                "grader": {"type": "string_check", "name": "g", "input": "a", "reference": "a", "operation": "eq"}
            },
        },
        "training_file",
        "invalid_training_file",
    ),
    Unusable(
        "preference-file-explicit-supervised",
        _pref_rows(12),
        "openai_preference",
        12,
        {"type": "supervised"},
        "training_file",
        "invalid_training_file",
    ),
    Unusable(
        "chat-file-dpo", chat_dataset(12), "openai_chat", 12, {"type": "dpo"}, "training_file", "invalid_training_file"
    ),
    Unusable(
        "gemini-file-dpo",
        jsonl([GEMINI] * 12),
        "vertex_gemini",
        12,
        {"type": "dpo"},
        "training_file",
        "invalid_training_file",
    ),
    Unusable(
        "raw-text-file-dpo",
        jsonl([{"text": f"t{i}"} for i in range(12)]),
        "raw_text",
        12,
        {"type": "dpo", "dpo": {}},
        "training_file",
        "invalid_training_file",
    ),
    Unusable(
        "preference-validation-file-supervised",
        chat_dataset(12),
        "openai_chat",
        12,
        None,
        "validation_file",
        "invalid_validation_file",
        validation=_pref_rows(3),
    ),
]


# --- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory):
    """One SQLite + filesystem server for the whole corpus."""
    srv = HoneServer(tmp_path_factory.mktemp("corpus-sqlite-fs"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def corpus_project(corpus_server):
    return corpus_server.new_project("dataset corpus")


@pytest.fixture(scope="module")
def sdk(corpus_project):
    client = corpus_project.openai()
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(corpus_project):
    with corpus_project.http() as client:
        yield client


def _file_ids(http: httpx.Client) -> set[str]:
    resp = http.get("/v1/files", params={"limit": 10000})
    assert resp.status_code == 200, resp.text
    return {f["id"] for f in resp.json()["data"]}


def _blobs(server: HoneServer) -> set[str]:
    """Every file under the filesystem storage's files/ folder, temporary files included."""
    root = Path(server.data_dir) / "blobs" / "files"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _assert_errors(errors: list[dict], total: int, text: str, line: int, field: str, code: str) -> None:
    """`errors`/`total` are the structured report, `text` the human message that must name line and field."""
    first = errors[0]
    assert (first["line"], first["field"], first["code"]) == (line, field, code), errors
    assert f"line {line}, field {field}: " in text, text[:500]
    assert first["message"] and first["message"] in text
    assert 1 <= len(errors) <= 20 and total >= len(errors)
    for e in errors:
        assert set(e) == {"line", "field", "code", "message"}


def _upload_error_file(sdk, case_content: bytes, line: int, field: str, code: str):
    """Uploads a malformed file: it is stored with status `error` and its problems in status_details."""
    uploaded = sdk.files.create(file=("x.jsonl", case_content), purpose="fine-tune")
    assert uploaded.status == "error", uploaded
    dataset = uploaded.to_dict()["dataset"]
    _assert_errors(dataset["errors"], dataset["total_errors"], uploaded.status_details, line, field, code)
    assert uploaded.status_details.startswith("Invalid file format: ")
    return uploaded, dataset


def _assert_job_refused(sdk, file_id: str, line: int, field: str, code: str) -> dict:
    """Creating a job with the file is a 400 naming the line and field; no job is created."""
    jobs_before = {j.id for j in sdk.fine_tuning.jobs.list(limit=100)}
    with pytest.raises(openai.APIStatusError) as info:
        sdk.fine_tuning.jobs.create(model="hone-tiny", training_file=file_id)
    exc = info.value
    assert exc.status_code == 400 and isinstance(exc, openai.BadRequestError), f"{exc.status_code}: {exc.message}"
    assert (exc.param, exc.code, exc.type) == ("training_file", "invalid_training_file", "invalid_request_error")
    envelope = exc.response.json()
    assert set(envelope) == {"error"} and envelope["error"] == exc.body
    assert (exc.body["line"], exc.body["field"], exc.body["file_id"]) == (line, field, file_id)
    _assert_errors(exc.body["errors"], exc.body["total_errors"], exc.body["message"], line, field, code)
    assert {j.id for j in sdk.fine_tuning.jobs.list(limit=100)} == jobs_before
    return exc.body


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in REJECTED])
def test_malformed_file_is_flagged_and_refused_with_line_and_field(case: Bad, corpus_server, sdk, http):
    uploaded, dataset = _upload_error_file(sdk, case.content(), case.line, case.field, case.code)
    reported = [(e["line"], e["field"], e["code"]) for e in dataset["errors"]]
    for expected in case.also:
        assert expected in reported, reported
    # The file is whole and listed as it is, so it can be downloaded and fixed.
    assert sdk.files.retrieve(uploaded.id).status == "error"
    assert uploaded.id in _file_ids(http)
    assert sdk.files.content(uploaded.id).read() == case.content()
    _assert_job_refused(sdk, uploaded.id, case.line, case.field, case.code)


def test_corpus_is_big_enough():
    assert len(REJECTED) + len(UNUSABLE) >= 40
    assert len({c.id for c in REJECTED}) == len(REJECTED)
    assert len({c.id for c in UNUSABLE}) == len(UNUSABLE)


def test_flagged_file_over_raw_http(corpus_server, http):
    data = lines(GOOD, GOOD, chat(U, asst(weight="1")))
    resp = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", data, "application/jsonl")}
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "error" and body["dataset"]["total_errors"] == 1
    assert body["status_details"] == (
        'Invalid file format: line 3, field messages[1].weight: weight must be 0 or 1, got "1"'
    )
    resp = http.post("/v1/fine_tuning/jobs", json={"model": "hone-tiny", "training_file": body["id"]})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code", "line", "field", "errors", "total_errors"}
    assert error["message"] == f"invalid training_file: {body['id']} failed validation. {body['status_details']}"


def test_many_errors_are_capped_at_20_but_all_counted(corpus_server, sdk, http):
    data = lines(GOOD, *[b"oops"] * 30, GOOD)
    uploaded, dataset = _upload_error_file(sdk, data, 2, "$", "invalid_json")
    assert [e["line"] for e in dataset["errors"]] == list(range(2, 22))
    assert dataset["total_errors"] == 30
    assert "and 10 more error(s)" in uploaded.status_details
    body = _assert_job_refused(sdk, uploaded.id, 2, "$", "invalid_json")
    assert body["total_errors"] == 30


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in UNUSABLE])
def test_unusable_file_uploads_but_job_creation_refuses_it(case: Unusable, corpus_server, sdk):
    uploaded = sdk.files.create(file=("x.jsonl", case.data), purpose="fine-tune")
    assert uploaded.status == "processed"
    assert uploaded.id in _blobs(corpus_server)  # where the rejected cases look for leftovers
    assert uploaded.to_dict()["dataset"] == {"format": case.format, "examples": case.examples}
    validation_id = None
    if case.validation is not None:
        validation_id = sdk.files.create(file=("v.jsonl", case.validation), purpose="fine-tune").id
    jobs_before = {j.id for j in sdk.fine_tuning.jobs.list(limit=100)}
    kwargs = {"method": case.method} if case.method is not None else {}
    if validation_id is not None:
        kwargs["validation_file"] = validation_id
    with pytest.raises(openai.APIStatusError) as info:
        sdk.fine_tuning.jobs.create(model="hone-tiny", training_file=uploaded.id, **kwargs)
    exc = info.value
    assert exc.status_code == 400, exc.message
    assert (exc.param, exc.code) == (case.param, case.code), exc.message
    if case.code == "invalid_n_examples":
        assert f"has {case.examples} example(s)" in exc.message and "at least 10" in exc.message
    assert {j.id for j in sdk.fine_tuning.jobs.list(limit=100)} == jobs_before  # no job was created


# --- PostgreSQL + S3 -----------------------------------------------------------------------


def test_s3_failed_upload_leaves_nothing_and_flagged_file_is_kept(moto, tmp_path):
    """An upload cut off by the size limit after a multipart part reached S3 is aborted, not kept;
    a complete but malformed file (a 10 MB line) is kept whole with status `error`."""
    bucket = f"hone-corpus-{os.urandom(4).hex()}"
    # A database of its own: a second server on the session's shared database would compete with
    # the `server` fixture's server for its jobs.
    database = PostgresDatabase()
    server = None
    try:
        server = HoneServer(
            tmp_path / "pg-s3",
            {
                **moto.env(),
                "HONE_DATABASE_URL": database.url,
                "HONE_STORAGE_URL": f"s3://{bucket}/blobs",
                "HONE_MAX_FILE_BYTES": str(11 * 1024 * 1024),
            },
        )
        project = server.new_project("s3 corpus")
        s3 = moto.client()
        with project.openai() as sdk, project.http() as http:
            big = chat_dataset(2000) * 60  # ~12 MB, streamed without a Content-Length

            def body():
                yield (
                    b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
                    b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
                )
                for i in range(0, len(big), 1 << 16):
                    yield big[i : i + (1 << 16)]
                yield b"\r\n--b--\r\n"

            resp = http.post("/v1/files", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
            assert resp.status_code == 413 and resp.json()["error"]["code"] == "file_too_large"
            assert s3.list_objects_v2(Bucket=bucket, Prefix="blobs/files/")["KeyCount"] == 0
            assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            assert _file_ids(http) == set()

            flagged, _ = _upload_error_file(sdk, _ten_mb_line(), 2, "$", "line_too_long")
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="blobs/files/")
            assert [o["Key"] for o in listed.get("Contents", [])] == [f"blobs/files/{flagged.id}"]
            assert _file_ids(http) == {flagged.id}
            _assert_job_refused(sdk, flagged.id, 2, "$", "line_too_long")
    finally:
        if server is not None:
            server.stop()
        database.drop()
