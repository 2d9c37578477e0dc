"""Unit tests of the streaming dataset validator (hone_kernel.datasets, the server's service.datasets), without a server."""

from __future__ import annotations

import itertools
import json

import pytest

from service.datasets import DatasetFormat, DatasetValidator, validate_bytes
from tests.support import chat_dataset, chat_line, jsonl

# --- one valid example file per format ------------------------------------------------

CHAT_WITH_TOOLS = {
    "messages": [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "4", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    "parallel_tool_calls": False,
}
CHAT_WEIGHTED = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello?", "weight": 0},
        {"role": "user", "content": [{"type": "text", "text": "Say hi properly"}]},
        {"role": "assistant", "content": "Hello!", "weight": 1},
    ]
}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
    "preferred_output": [{"role": "assistant", "content": "Paris"}],
    "non_preferred_output": [{"role": "assistant", "content": "Lyon"}],
}
GEMINI = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Capital of France?"}]},
        {"role": "model", "parts": [{"text": "Paris"}]},
    ],
}

VALID = [
    pytest.param([chat_line(), CHAT_WITH_TOOLS, CHAT_WEIGHTED], DatasetFormat.OPENAI_CHAT, id="openai-chat"),
    pytest.param(
        [{"prompt": "2+2=", "completion": "4"}, {"prompt": "", "completion": "empty prompt is fine"}],
        DatasetFormat.PROMPT_COMPLETION,
        id="prompt-completion",
    ),
    pytest.param([PREFERENCE, PREFERENCE], DatasetFormat.OPENAI_PREFERENCE, id="openai-preference"),
    pytest.param(
        [
            GEMINI,
            {
                "contents": [
                    {"role": "user", "parts": [{"text": "a"}]},
                    {"role": "model", "parts": [{"text": "b"}]},
                    {"role": "user", "parts": [{"text": "c"}]},
                    {"role": "model", "parts": [{"text": "d"}, {"text": "e"}]},
                ]
            },
        ],
        DatasetFormat.VERTEX_GEMINI,
        id="vertex-gemini",
    ),
    pytest.param(
        [
            {"systemInstruction": GEMINI["systemInstruction"], "contents": GEMINI["contents"][:1]},
            {"contents": [*GEMINI["contents"], {"role": "user", "parts": [{"text": "And of Spain?"}]}]},
            {"system_instruction": {"parts": [{"text": "Be brief."}]}, "contents": GEMINI["contents"][:1]},
        ],
        DatasetFormat.VERTEX_PROMPTS,
        id="vertex-prompts",
    ),
    pytest.param([{"input_text": "2+2?", "output_text": "4"}] * 3, DatasetFormat.VERTEX_LEGACY, id="vertex-legacy"),
    pytest.param(
        [{"input": "2+2?", "output": "4"}, {"input": "3+3?", "output": "6"}],
        DatasetFormat.PAIRS,
        id="pairs-input-output",
    ),
    pytest.param(
        [{"instruction": "Add", "input": "2 and 2", "output": "4"}, {"instruction": "Say hi", "output": "hi"}],
        DatasetFormat.PAIRS,
        id="pairs-instruction",
    ),
    pytest.param(
        [{"text": "Once upon a time."}, {"text": "The end.", "source": "metadata is allowed"}],
        DatasetFormat.RAW_TEXT,
        id="raw-text",
    ),
]


@pytest.mark.parametrize("rows, fmt", VALID)
def test_valid_file_of_every_format_is_accepted(rows, fmt):
    report = validate_bytes(jsonl(rows))
    assert report.ok, report.summary()
    assert report.errors == [] and report.total_errors == 0
    assert report.format is fmt
    assert report.examples == len(rows)
    assert report.lines == len(rows)


def test_last_line_without_newline_counts():
    data = chat_dataset(3).rstrip(b"\n")
    report = validate_bytes(data)
    assert report.ok and report.examples == 3 and report.lines == 3


def test_crlf_file_is_accepted():
    data = chat_dataset(5).replace(b"\n", b"\r\n")
    report = validate_bytes(data)
    assert report.ok, report.summary()
    assert (report.format, report.examples) == (DatasetFormat.OPENAI_CHAT, 5)


def test_utf8_bom_file_is_accepted():
    data = b"\xef\xbb\xbf" + chat_dataset(5)
    report = validate_bytes(data)
    assert report.ok, report.summary()
    assert (report.format, report.examples) == (DatasetFormat.OPENAI_CHAT, 5)


def test_utf8_bom_and_crlf_fed_byte_by_byte_is_accepted():
    data = b"\xef\xbb\xbf" + chat_dataset(4).replace(b"\n", b"\r\n")
    v = DatasetValidator()
    for i in range(len(data)):
        v.feed(data[i : i + 1])
    report = v.finish()
    assert report.ok, report.summary()
    assert report.examples == 4


def test_non_ascii_text_split_across_chunks_is_accepted():
    data = jsonl([chat_line("Qu'est-ce que c'est ? 日本語 🙂", "Ça va — ok ✓")] * 3)
    v = DatasetValidator()
    for i in range(len(data)):  # every multi-byte character is cut in the middle
        v.feed(data[i : i + 1])
    report = v.finish()
    assert report.ok, report.summary()
    assert report.examples == 3


# --- line numbers under odd chunking ----------------------------------------------------


def _mixed_file() -> tuple[bytes, list[tuple[int, str, str]]]:
    """A BOM + CRLF chat file with errors on known lines; returns (bytes, expected (line, field, code))."""
    good = json.dumps(chat_line()).encode()
    rows = [
        good,  # 1
        good,  # 2
        b'{"messages": [{"role": "user", "content": "hi"}, ',  # 3 invalid JSON
        good,  # 4
        b"",  # 5 blank
        json.dumps(
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ).encode(),  # 6
        good,  # 7
        json.dumps(
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}
        ).encode(),  # 8
        '{"messages": [{"role": "user", "content": "café"}]}'.encode(),  # 9 no assistant
        b"\xff\xfe not utf-8",  # 10
        good,  # 11
    ]
    data = b"\xef\xbb\xbf" + b"\r\n".join(rows) + b"\r\n"
    expected = [
        (3, "$", "invalid_json"),
        (5, "$", "blank_line"),
        (6, "messages[0].role", "unrecognized_role"),
        (8, "messages[1].weight", "invalid_weight"),
        (9, "messages", "example_missing_assistant_message"),
        (10, "$", "invalid_encoding"),
    ]
    return data, expected


def _errors(report) -> list[tuple[int, str, str]]:
    return [(e.line, e.field, e.code) for e in report.errors]


def _feed_in_chunks(data: bytes, sizes, **kwargs):
    v = DatasetValidator(**kwargs)
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        v.feed(data[pos : pos + size])
        pos += size
    assert pos >= len(data)
    return v.finish()


def test_mixed_file_errors_name_the_right_lines():
    data, expected = _mixed_file()
    report = validate_bytes(data)
    assert _errors(report) == expected
    assert report.total_errors == len(expected)
    assert report.examples == 5 and report.lines == 11


@pytest.mark.parametrize("size", range(1, 8))
def test_line_numbers_survive_fixed_size_chunks(size):
    data, expected = _mixed_file()
    report = _feed_in_chunks(data, itertools.repeat(size))
    assert _errors(report) == expected
    assert report.examples == 5 and report.lines == 11


@pytest.mark.parametrize("pattern", [(1, 2, 3, 4, 5, 6, 7), (7, 5, 3, 1), (2, 7, 1, 1, 6), (3,)])
def test_line_numbers_survive_irregular_chunks(pattern):
    data, expected = _mixed_file()
    report = _feed_in_chunks(data, itertools.cycle(pattern))
    assert _errors(report) == expected


def test_empty_chunks_are_ignored():
    data, expected = _mixed_file()
    v = DatasetValidator()
    for i in range(0, len(data), 5):
        v.feed(b"")
        v.feed(data[i : i + 5])
    assert _errors(v.finish()) == expected


# --- error cap ---------------------------------------------------------------------------


def test_only_the_first_20_errors_are_kept_but_all_are_counted():
    rows = [json.dumps(chat_line()).encode()] + [b"not json"] * 30
    report = validate_bytes(b"\n".join(rows) + b"\n")
    assert report.total_errors == 30
    assert len(report.errors) == 20
    assert [e.line for e in report.errors] == list(range(2, 22))
    assert report.summary().endswith("; and 10 more error(s)")
    assert not report.ok


def test_error_cap_counts_several_errors_on_one_line():
    bad = {
        "messages": [
            {"role": "user", "content": "x", "weight": 1, "bogus": 1},
            {"role": "assistant", "content": "", "weight": 7},
        ]
    }
    report = validate_bytes(jsonl([bad] * 10), max_errors=5)
    per_line = validate_bytes(jsonl([bad])).total_errors
    assert per_line >= 3
    assert report.total_errors == 10 * per_line
    assert len(report.errors) == 5


def test_error_cap_is_configurable():
    report = validate_bytes(b"x\n" * 8, max_errors=3)
    assert [e.line for e in report.errors] == [1, 2, 3]
    assert report.total_errors == 8


# --- over-long lines ------------------------------------------------------------------------

LIMIT = 200


def _long_line_file(trailing_newline: bool = True) -> bytes:
    long_row = json.dumps(chat_line("x" * 1000)).encode()
    assert len(long_row) > LIMIT
    bad_row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "model", "content": "a"}]}).encode()
    good_row = json.dumps(chat_line()).encode()
    rows = [good_row, long_row, bad_row, good_row, long_row]
    return b"\n".join(rows) + (b"\n" if trailing_newline else b"")


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([1 << 20], id="one-chunk"),
        pytest.param(itertools.repeat(1), id="1-byte-chunks"),
        pytest.param(itertools.cycle(range(1, 8)), id="1-to-7-byte-chunks"),
        pytest.param(itertools.repeat(64), id="64-byte-chunks"),
        pytest.param(itertools.repeat(LIMIT + 1), id="limit-plus-one-chunks"),
    ],
)
@pytest.mark.parametrize("trailing_newline", [True, False], ids=["newline-at-end", "no-newline-at-end"])
def test_too_long_line_is_reported_once_and_the_next_line_is_checked(sizes, trailing_newline):
    data = _long_line_file(trailing_newline)
    report = _feed_in_chunks(data, sizes, max_line_bytes=LIMIT)
    assert _errors(report) == [
        (2, "$", "line_too_long"),
        (3, "messages[1].role", "unrecognized_role"),
        (5, "$", "line_too_long"),
    ]
    assert report.examples == 2
    assert f"{LIMIT}-byte limit" in report.errors[0].message


def test_line_at_the_limit_is_not_too_long():
    row = json.dumps(chat_line("y" * 50)).encode()
    report = validate_bytes(row + b"\n" + row + b"\n", max_line_bytes=len(row))
    assert report.ok, report.summary()
    report = validate_bytes(row + b"\n" + row + b"\n", max_line_bytes=len(row) - 1)
    assert [(e.line, e.code) for e in report.errors] == [(1, "line_too_long"), (2, "line_too_long")]


def test_default_limit_is_4_mib():
    row = json.dumps({"text": "z" * (4 << 20)}).encode()
    report = validate_bytes(row + b"\n" + b"[]\n")
    assert _errors(report) == [(1, "$", "line_too_long"), (2, "$", "data_type")]


# --- a few whole-file outcomes ------------------------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(b"", [(1, "$", "empty_file")], id="empty"),
        pytest.param(b"\xef\xbb\xbf", [(1, "$", "empty_file")], id="only-utf8-bom"),
        pytest.param(
            b"\xff\xfe" + '{"text": "hi"}\n'.encode("utf-16-le"), [(1, "$", "invalid_encoding")], id="utf16-le-bom"
        ),
        pytest.param(
            b"\xfe\xff" + '{"text": "hi"}\n'.encode("utf-16-be"), [(1, "$", "invalid_encoding")], id="utf16-be-bom"
        ),
        pytest.param(b"\xff\xfe", [(1, "$", "invalid_encoding")], id="utf16-bom-only"),
        pytest.param(b'{"text": NaN}\n', [(1, "$", "invalid_json")], id="nan"),
        pytest.param(b'{"text": "a", "n": -Infinity}\n', [(1, "$", "invalid_json")], id="minus-infinity"),
        pytest.param(b"[" * 100_000 + b"\n", [(1, "$", "invalid_json")], id="nested-too-deeply"),
        pytest.param(
            b'{"text": "a"}\n{"prompt": "p", "completion": "c"}\n', [(2, "$", "mixed_formats")], id="mixed-formats"
        ),
    ],
)
def test_whole_file_errors(data, expected):
    report = validate_bytes(data)
    assert _errors(report) == expected
    assert not report.ok


def test_gemini_last_turn_error_names_the_last_turn():
    # The first line ends with its answer, so the file holds examples: a later line ending with the user's turn
    # lacks its answer (a first line like it would make the file a prompts file: tests below).
    row = {
        "contents": ["oops", {"role": "model", "parts": [{"text": "a"}]}, {"role": "user", "parts": [{"text": "b"}]}]
    }
    report = validate_bytes(jsonl([GEMINI, row]))
    assert report.format is DatasetFormat.VERTEX_GEMINI
    assert _errors(report) == [(2, "contents[0]", "invalid_type"), (2, "contents[2].role", "invalid_last_turn")]


def test_weight_false_is_one_error_not_two():
    report = validate_bytes(
        b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":false}]}\n'
    )
    assert [(e.line, e.field, e.code) for e in report.errors] == [(1, "messages[1].weight", "invalid_weight")]


def test_chat_line_without_messages_says_so():
    report = validate_bytes(
        b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}\n{"tools":[]}\n'
    )
    assert [(e.line, e.field, e.code) for e in report.errors] == [(2, "messages", "missing_messages_list")]


# --- media inputs and the minimum example count -----------------------------------------


@pytest.mark.parametrize(
    "line, field, kind",
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA"}}]},
                    {"role": "assistant", "content": "Hi."},
                ]
            },
            "messages[0].content[0].type",
            "audio",
        ),
        (
            {
                "input": {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            },
            "input.messages[0].content[0].type",
            "file",
        ),
        (
            {
                "contents": [
                    {"role": "user", "parts": [{"inline_data": {"mime_type": "audio/wav", "data": "AA"}}]},
                    {"role": "model", "parts": [{"text": "a"}]},
                ]
            },
            "contents[0].parts[0].inline_data",
            "audio",
        ),
    ],
)
def test_audio_and_file_inputs_are_refused_with_line_and_field(line, field, kind):
    good = {"messages": chat_line()["messages"]} if "messages" in line else None
    report = validate_bytes(jsonl([good, line] if good else [line]))
    [error] = report.errors
    assert (error.line, error.field, error.code) == (2 if good else 1, field, "unsupported_media")
    assert error.message.startswith(f"{kind} inputs are not supported for this model")


def test_media_is_one_predicate_that_allows_images_only():
    """Images are checked as images (tests/test_vision_inputs.py) and trained by vision models; nothing reads the rest."""
    from hone_kernel.dataset_checks import MEDIA_PART_TYPES, media_supported

    assert [kind for kind in sorted({*MEDIA_PART_TYPES.values(), "video"}) if media_supported(kind)] == ["image"]


def test_the_minimum_example_count_is_one_shared_rule():
    from hone_kernel.datasets import MIN_TRAINING_EXAMPLES, too_few_examples
    from service.settings import FIELDS as SETTINGS_FIELDS

    assert SETTINGS_FIELDS["min_training_examples"].default == MIN_TRAINING_EXAMPLES == 10
    assert too_few_examples(3) == "Training file has 3 example(s), but must have at least 10 examples"
    assert too_few_examples(10) is None and too_few_examples(1, minimum=1) is None


# --- Vertex/Gemini prompts (a Vertex distillationSpec's promptDatasetUri) -----------------------------------------

GEMINI_PROMPT = {"systemInstruction": GEMINI["systemInstruction"], "contents": GEMINI["contents"][:1]}


def test_a_gemini_prompts_file_is_for_distillation_only():
    from service.datasets import methods_for

    report = validate_bytes(jsonl([GEMINI_PROMPT] * 10))
    assert (report.ok, report.format, report.examples) == (True, DatasetFormat.VERTEX_PROMPTS, 10)
    assert methods_for(DatasetFormat.VERTEX_PROMPTS) == {"distillation"}
    assert methods_for(DatasetFormat.VERTEX_GEMINI) == {"supervised"}


def test_a_gemini_prompts_file_names_each_line_and_field_it_refuses():
    user = {"role": "user", "parts": [{"text": "q"}]}
    report = validate_bytes(
        jsonl(
            [
                GEMINI_PROMPT,
                GEMINI,  # ends with its answer: in a prompts file, the teacher writes the answers
                {"contents": [user, {"role": "assistant", "parts": [{"text": "a"}]}]},
                {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AA"}}]}]},
                {"contents": [user], "label": "Billing"},  # no grader reads Gemini prompts: no item fields
                {"contents": []},
                {"messages": [{"role": "user", "content": "q"}]},
            ]
        )
    )
    assert _errors(report) == [
        (2, "contents[1].role", "invalid_prompt"),
        (3, "contents[1].role", "unrecognized_role"),
        (4, "contents[0].parts[0].inlineData.data", "invalid_image_format"),
        (5, "label", "unrecognized_key"),
        (6, "contents", "missing_content"),
        (7, "$", "mixed_formats"),
    ]
    assert report.format is DatasetFormat.VERTEX_PROMPTS and report.examples == 1
    assert report.errors[0].message.startswith("the last turn must be from the user: the teacher writes the answer")
    assert "Vertex/Gemini prompts ({contents} ending with the user's turn)" in report.errors[-1].message


def test_a_gemini_prompt_is_asked_as_chat_messages_and_the_teacher_answers_it():
    """What the trainer's teacher phase (trainer/distill.py) sends for a Gemini prompt line, and writes back: the
    system instruction and turns as chat messages (a model turn is context, not trained), then the answer."""
    from hone_kernel.dataset_messages import to_messages
    from hone_kernel.dataset_prompts import prompt_messages
    from hone_kernel.graders.run import ModelReply
    from hone_kernel.trainer_contract import Distillation, FileRef
    from trainer.distill import teacher_file

    line = {
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "contents": [*GEMINI["contents"], {"role": "user", "parts": [{"text": "And of "}, {"text": "Spain?"}]}],
    }
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Spain?"},
    ]
    assert to_messages(line, "vertex_prompts") == (expected, [False] * 4, None)
    assert prompt_messages(line, "vertex_prompts") == expected
    assert to_messages(GEMINI, "vertex_gemini")[1] == [False, False, True]  # examples train their answers

    class Teacher:  # the trainer's ControlPlaneModels, answering without a control plane
        def __init__(self):
            self.asked: list = []

        async def chat(self, model, messages, params):
            self.asked.append((model, messages))
            return ModelReply("Madrid")

        async def aclose(self):
            pass

    class Blobs(dict):  # the trainer's storage, in memory
        def list(self, prefix):
            return [k for k in self if k.startswith(prefix)]

        def iter_lines(self, key):
            return iter(self[key].splitlines())

        def put_bytes(self, key, data):
            self[key] = data

    blobs, teacher = Blobs({"files/p.jsonl": jsonl([line])}), Teacher()
    d = Distillation(teacher="hone-tiny", answers_key="jobs/j/teacher_answers.jsonl")
    answers, failed = teacher_file(
        d, blobs, FileRef("files/p.jsonl", "vertex_prompts"), "training file", lambda: teacher, lambda *_: None
    )
    assert (answers, failed) == (FileRef(d.answers_key, "openai_chat"), 0)
    assert teacher.asked == [("hone-tiny", expected)]
    assert json.loads(blobs[d.answers_key]) == {"messages": [*expected, {"role": "assistant", "content": "Madrid"}]}
