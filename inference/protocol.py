"""Request bodies, as vLLM's OpenAI server accepts them: unknown fields are ignored (extra="allow"), not rejected."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class ParamError(ValueError):
    """A validator's error that names its request parameter (vLLM's VLLMValidationError): the 400 it
    becomes carries `param`."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _check_prompt_mode(request):
    if request.continue_final_message and request.add_generation_prompt:
        raise ParamError(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.", "continue_final_message"
        )
    return request


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Sampling(_Body):
    """Fields shared by chat and text completions (vLLM's SamplingParams subset this engine honours)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    return_token_ids: bool | None = None  # non-streamed responses only
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None  # hone_kernel/output_format.py reads it

    @model_validator(mode="before")
    @classmethod
    def _stream_options_need_stream(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
            raise ParamError("Stream options can only be defined when `stream=True`.", "stream_options")
        return data


class FunctionDefinition(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionToolsParam(_Body):
    type: Literal["function"] = "function"
    function: FunctionDefinition


_NAMED_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


def _check_tool_usage(data: Any) -> Any:
    """vLLM's check: tools default tool_choice to "auto"; a tool_choice needs tools; a named one names one of them."""
    if not isinstance(data, dict):
        return data
    if "tool_choice" not in data and data.get("tools"):
        data["tool_choice"] = "auto"
    choice = data.get("tool_choice")
    if choice is None or choice == "none":
        return data
    if data.get("tools") is None:
        raise ParamError("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise ParamError(
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", "auto" or "required" are supported.',
            "tool_choice",
        )
    if choice == "required" and isinstance(data["tools"], list) and not data["tools"]:
        data["tool_choice"] = "none"  # OpenAI's: required with no tools behaves as none
        return data
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict):
            raise ParamError(
                f"Invalid value for `function`: `{function}` in `tool_choice`! {_NAMED_USAGE}", "tool_choice"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ParamError(f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_NAMED_USAGE}", "tool_choice")
        tools = data["tools"] if isinstance(data["tools"], list) else []
        if not any(isinstance(t, dict) and (t.get("function") or {}).get("name") == name for t in tools):
            raise ParamError(
                "The tool specified in `tool_choice` does not match any of the specified `tools`", "tool_choice"
            )
    return data


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = "none"
    parallel_tool_calls: bool | None = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _tool_usage(cls, data: Any) -> Any:
        return _check_tool_usage(data)

    @model_validator(mode="after")
    def _one_prompt_mode(self) -> ChatCompletionRequest:
        return _check_prompt_mode(self)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    add_special_tokens: bool = True


class LoadLoRAAdapterRequest(_Body):
    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False


class UnloadLoRAAdapterRequest(_Body):
    lora_name: str
    lora_int_id: int | None = None  # accepted and ignored, as in 0.33


class TokenizeCompletionRequest(_Body):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(_Body):
    model: str | None = None
    messages: list[dict[str, Any]]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool | None = False
    # Hone's extension: the digest of the prompt's pixels (hone_kernel.vision.pixel_digest), for the parity gate
    return_pixel_digest: bool = False

    @model_validator(mode="after")
    def _one_prompt_mode(self) -> TokenizeChatRequest:
        return _check_prompt_mode(self)


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
