"""The gateway passes on only the request fields both engines honour (service/gateway_bodies.py `check_fields`):
OpenAI's fields Hone does not do, and fields nobody knows, are 400s naming them, where vLLM and the built-in engine
would take them and ignore them. In process: the check alone (tests/test_tool_training.py sends them through a real
server with the openai SDK)."""

from __future__ import annotations

import pytest

from service.errors import ErrorCode, InvalidRequest
from service.gateway_bodies import check_body

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            CHAT,
            {
                "model": "m",
                "messages": MESSAGES,
                "n": 2,
                "seed": 1,
                "stop": ["x"],
                "max_completion_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
                "logprobs": True,
                "top_logprobs": 2,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.5,
                "response_format": {"type": "json_object"},
                "tools": [],
                "tool_choice": "none",
                "parallel_tool_calls": False,
                "store": True,
                "metadata": {"a": "b"},
                "top_k": 5,  # vLLM's extensions, which both engines honour
                "repetition_penalty": 1.1,
                "chat_template_kwargs": {},
            },
        ),
        (TEXT, {"model": "m", "prompt": "hi", "logprobs": 2, "n": 2, "stop": "x", "max_tokens": 3, "seed": 4}),
    ],
)
def test_what_both_engines_honour_passes(path, body):
    assert check_body(dict(body), path) == body


@pytest.mark.parametrize(
    ("path", "field", "code", "words"),
    [
        (CHAT, "user", ErrorCode.UNSUPPORTED_PARAMETER, "'user' (per-user identifiers) is not supported"),
        (CHAT, "logit_bias", ErrorCode.UNSUPPORTED_PARAMETER, "'logit_bias'"),
        (CHAT, "audio", ErrorCode.UNSUPPORTED_PARAMETER, "audio output"),
        (CHAT, "functions", ErrorCode.UNSUPPORTED_PARAMETER, "use tools"),
        (CHAT, "store_forever", ErrorCode.UNKNOWN_PARAMETER, "Unrecognized request argument supplied: store_forever"),
        (TEXT, "echo", ErrorCode.UNSUPPORTED_PARAMETER, "'echo'"),
        (TEXT, "suffix", ErrorCode.UNSUPPORTED_PARAMETER, "'suffix'"),
        (TEXT, "store", ErrorCode.UNKNOWN_PARAMETER, "Unrecognized"),  # stored completions are chat's only
    ],
)
def test_what_no_engine_honours_is_a_400_naming_it(path, field, code, words):
    body = {"model": "m", "messages": MESSAGES} if path == CHAT else {"model": "m", "prompt": "hi"}
    with pytest.raises(InvalidRequest) as caught:
        check_body({**body, field: 1}, path)
    assert caught.value.param == field and caught.value.code == code
    assert words in caught.value.message
