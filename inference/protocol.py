"""Request bodies, as vLLM's OpenAI server accepts them: unknown fields are ignored (extra="allow"), not rejected."""

from __future__ import annotations

from typing import Any

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


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

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
