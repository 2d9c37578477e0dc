"""Fuzzing the dataset rules (hypothesis): the validator never crashes, every rejection names a line and a
field, a file the validator accepts is one the trainer can read, and one line splitter cuts a file the same way
whatever its chunking and whichever storage backend the trainer reads it from (S3 on moto's server included)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hone_kernel.dataset_lines import TOO_LONG, UTF8_BOM, LineSplitter, dataset_lines
from hone_kernel.datasets import DatasetFormat, DatasetValidator, validate_bytes
from trainer.blobs import FolderBlobs, S3Blobs
from trainer.data import to_messages

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
texts = st.text(max_size=12)
content = st.one_of(
    texts,
    st.none(),
    json_values,
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": texts}), max_size=2),
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "model", "bogus", 3]),
        "content": content,
    },
    optional={
        "weight": st.sampled_from([0, 1, 2, "1", None]),
        "name": texts,
        "tool_calls": json_values,
        "tool_call_id": texts,
    },
)
part = st.fixed_dictionaries({}, optional={"text": st.one_of(texts, st.integers()), "inlineData": json_values})
rows = st.one_of(
    st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=4)},
        optional={"tools": json_values, "parallel_tool_calls": st.booleans()},
    ),
    st.fixed_dictionaries({"prompt": st.one_of(texts, json_values), "completion": st.one_of(texts, json_values)}),
    st.fixed_dictionaries(
        {
            "input": st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}),
            "preferred_output": st.lists(message, max_size=2),
            "non_preferred_output": st.lists(message, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {
            "contents": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "model", "system", "x"]), "parts": st.lists(part, max_size=2)}
                ),
                max_size=4,
            )
        },
        optional={"systemInstruction": st.fixed_dictionaries({"parts": st.lists(part, max_size=2)})},
    ),
    st.fixed_dictionaries({"input_text": st.one_of(texts, json_values), "output_text": st.one_of(texts, json_values)}),
    st.fixed_dictionaries({"instruction": texts, "output": st.one_of(texts, json_values)}, optional={"input": texts}),
    st.fixed_dictionaries({"text": st.one_of(texts, json_values)}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)
# Rows built to be valid (mostly: the rules have corners these do not know), so the acceptance path is fuzzed too.
words = st.text(min_size=1, max_size=12).filter(str.strip)
turns = st.lists(st.tuples(words, words), min_size=1, max_size=3)
valid_rows = {
    "openai_chat": st.tuples(st.one_of(st.none(), words), turns, st.sampled_from([None, 0, 1])).map(
        lambda t: {
            "messages": ([{"role": "system", "content": t[0]}] if t[0] else [])
            + [
                m
                for q, a in t[1]
                for m in (
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a, **({} if t[2] is None else {"weight": t[2]})},
                )
            ]
        }
    ),
    "vertex_gemini": turns.map(
        lambda ts: {
            "contents": [
                c
                for q, a in ts
                for c in ({"role": "user", "parts": [{"text": q}]}, {"role": "model", "parts": [{"text": a}]})
            ]
        }
    ),
    "vertex_legacy": st.tuples(words, words).map(lambda t: {"input_text": t[0], "output_text": t[1]}),
    "pairs": st.tuples(words, words, st.one_of(st.none(), words)).map(
        lambda t: {"instruction": t[0], "output": t[1], **({"input": t[2]} if t[2] else {})}
    ),
}
valid_files = st.sampled_from(sorted(valid_rows)).flatmap(
    lambda kind: st.lists(valid_rows[kind], min_size=1, max_size=5)
)

lines = st.one_of(
    rows.map(lambda row: json.dumps(row).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=24),
    st.text(max_size=24).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
endings = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
files = st.lists(st.tuples(lines, endings), max_size=8).map(lambda pairs: b"".join(line + end for line, end in pairs))
prefixes = st.sampled_from([b"", UTF8_BOM, b"\xff\xfe", b"\n"])


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, start = [], 0
    for size in sizes:
        chunks.append(data[start : start + size])
        start += size
    return chunks + [data[start:]]


def reference_lines(data: bytes) -> list[bytes]:
    """The rule, written as plainly as possible: LF ends a line, one CR before it is dropped, BOM dropped."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


@FUZZ
@given(prefix=prefixes, data=files, sizes=st.lists(st.integers(min_value=0, max_value=7), max_size=12))
def test_the_validator_never_crashes_and_every_rejection_names_a_line_and_a_field(prefix, data, sizes):
    data = prefix + data
    validator = DatasetValidator(max_line_bytes=64, max_errors=50)
    for chunk in chunked(data, sizes):
        validator.feed(chunk)
    report = validator.finish()
    whole = validate_bytes(data, max_line_bytes=64, max_errors=50)
    assert [e.as_dict() for e in report.errors] == [e.as_dict() for e in whole.errors]  # chunking changes nothing
    assert (report.examples, report.lines, report.format) == (whole.examples, whole.lines, whole.format)
    assert report.ok == (report.total_errors == 0) and report.examples <= max(report.lines, 0)
    for error in report.errors:
        assert 1 <= error.line <= max(report.lines, 1), (error, report.lines)
        assert isinstance(error.field, str) and error.field and error.code and error.message
        assert f"line {error.line}, field {error.field}: " in str(error)


CHAT_FORMATS = {
    DatasetFormat.OPENAI_CHAT,
    DatasetFormat.VERTEX_GEMINI,
    DatasetFormat.VERTEX_PROMPTS,  # a distillation's teacher is asked them as chat messages
    DatasetFormat.VERTEX_LEGACY,
    DatasetFormat.PAIRS,
}


@FUZZ
@given(
    data=valid_files.map(lambda rows: [json.dumps(row).encode() for row in rows])
    | st.lists(rows.map(lambda row: json.dumps(row).encode()), min_size=1, max_size=5)
)
def test_what_the_validator_accepts_the_trainer_reads(data):
    """Lines of a file that validates are turned into chat messages by the trainer without an error."""
    report = validate_bytes(b"\n".join(data))
    if not report.ok or report.format not in CHAT_FORMATS:
        return
    for raw in dataset_lines([b"\n".join(data)]):
        messages, trained, _ = to_messages(json.loads(raw), report.format.value)
        assert len(messages) == len(trained) and all(
            isinstance(m.get("content", ""), (str, list, type(None))) for m in messages
        )


@FUZZ
@given(data=st.binary(max_size=200) | files, sizes=st.lists(st.integers(min_value=0, max_value=9), max_size=30))
def test_the_line_splitter_cuts_the_same_lines_however_the_bytes_are_chunked(data, sizes):
    splitter = LineSplitter()
    got: list = []
    for chunk in chunked(data, sizes):
        got += splitter.feed(chunk)
    got += splitter.finish()
    assert got == reference_lines(data)


@FUZZ
@given(data=files, sizes=st.lists(st.integers(min_value=0, max_value=9), max_size=30))
def test_a_line_over_the_limit_is_one_marker_and_the_rest_are_unchanged(data, sizes):
    limit = 16
    splitter = LineSplitter(limit)
    got: list = []
    for chunk in chunked(data, sizes):
        got += splitter.feed(chunk)
    got += splitter.finish()
    # A line is "too long" by its bytes before the LF (a CR before it counts), as the validator reports it.
    expected = []
    raw = data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data
    pieces = raw.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    for piece in pieces:
        expected.append(TOO_LONG if len(piece) > limit else (piece[:-1] if piece.endswith(b"\r") else piece))
    assert got == expected


TRICKY = [
    b'{"text": "a"}\r{"text": "b"}\n',
    b'{"text": "a"}\r\n{"text": "b"}',
    b"\xef\xbb\xbf{}\n\n\r\n{}",
    b'{"text": "\x85 \x0b \x0c \x1c"}\n{"text": "\xe2\x80\xa8"}\n',
    b"\r\r\n\r",
    b"",
]


@pytest.mark.parametrize("data", TRICKY)
def test_every_storage_backend_gives_the_trainer_the_validators_lines(tmp_path, moto, data):
    FolderBlobs(tmp_path).put_bytes("jobs/j/train.jsonl", data)
    env = moto.env()
    s3 = moto.client()
    s3.create_bucket(Bucket="hone-lines")
    s3.put_object(Bucket="hone-lines", Key="p/jobs/j/train.jsonl", Body=data)
    blobs = S3Blobs("hone-lines", "p/", env["AWS_ENDPOINT_URL"])
    blobs.client = s3
    expected = reference_lines(data)
    assert list(FolderBlobs(tmp_path).iter_lines("jobs/j/train.jsonl")) == expected
    assert list(blobs.iter_lines("jobs/j/train.jsonl")) == expected
    assert validate_bytes(data).lines == len(expected)
