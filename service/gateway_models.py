"""The gateway's request and response bodies (/v1/chat/completions, /v1/completions), for the OpenAPI document.

The gateway reads `model`, refuses fields no engine honours (service/gateway_bodies.py `check_fields`: OpenAI's
that Hone does not do, and unknown ones) and relays the body to the model's engine (Hone's built-in engine or vLLM),
which validates the rest. vLLM's extensions both engines honour (top_k, repetition_penalty, stop_token_ids,
ignore_eos, chat_template_kwargs, ...) are accepted too, so these models are open (additional properties allowed)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None


class _Sampling(_Open):
    model: str = Field(
        min_length=1,
        description="A tuned model (ft:...), a checkpoint, or a base model with an endpoint in the caller's project.",
    )
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = Field(
        None,
        description="true: the answer comes as server-sent events (text/event-stream)"
        ", one chunk per `data:` line, then `data: [DONE]`.",
    )
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, description="vLLM's: above 1 discourages repeats.")
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}: held by the grammar.'
    )


class FunctionCall(_Open):
    name: str
    arguments: str = Field(description="The call's arguments: a JSON object, encoded as a string.")


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant turn's calls (history).")
    tool_call_id: str | None = Field(None, description="A tool turn's: the call it answers.")


class FunctionDefinition(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="The arguments' JSON Schema.")
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoice(_Open):
    type: Literal["function"] = "function"
    function: dict[str, str] = Field(description='{"name": "..."}: the function the answer calls.')


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = Field(None, description="true: each answer token's log-probability (choices[].logprobs).")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: the likeliest tokens at each step.")
    store: bool | None = Field(
        None, description="true: the completion is kept for the Stored Completions API (GET /v1/chat/completions)."
    )
    metadata: dict[str, str] | None = Field(
        None, description="With store: up to 16 pairs kept with the stored completion, to filter and export by."
    )
    tools: list[Tool] | None = Field(None, description="Functions the model may call (rendered by the chat template).")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description='"auto" (the default with tools): the model decides, read by its family\'s parser; "required" '
        'or a named function: the answer is held by the grammar to valid calls; "none": content only.',
    )
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call per answer.")


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20, description="Each token's log-probability and this many likeliest.")


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(_Open):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Open):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(_Open):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class FunctionCallDelta(_Open):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Open):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChunkDelta(_Open):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(_Open):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Open):
    """One server-sent event of a streamed chat completion (`data: {...}`); the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(_Open):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(_Open):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(_Open):
    """A text completion; each streamed event (`data: {...}`) has the same shape, then `data: [DONE]`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
