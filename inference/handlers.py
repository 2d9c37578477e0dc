"""The OpenAI-compatible work behind the routes: prompt rendering, sampling-parameter checks, responses and
SSE streams shaped as vLLM 0.33 shapes them (reference §2)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

from hone_kernel.output_format import FormatError
from hone_kernel.output_format import parse as parse_output_format
from inference import VLLM_PROTOCOL_VERSION, chat_responses, logprobs, tool_calls, vision_prompts
from inference.adapters import ServingProfile
from inference.errors import bad_request
from inference.generation import Finished, GenerationJob, SamplingParams
from inference.models import LoraEntry, ServingModels
from inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from inference.streaming import collect, sse, stream, usage

NO_CHAT_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a "
    "chat template if the tokenizer does not define one."
)


class OpenAIHandlers:
    def __init__(self, models: ServingModels):
        self.models = models
        self.engine = models.engine
        self.tokenizer = models.engine.tokenizer
        digest = hashlib.sha256(f"{models.model_path}|{self.engine.dtype}".encode()).hexdigest()[:8]
        self.fingerprint = f"vllm-{VLLM_PROTOCOL_VERSION}-{digest}"

    # --- prompts ------------------------------------------------------------------------------------

    def render_chat(
        self,
        profile: ServingProfile,
        messages: list[dict],
        *,
        add_generation_prompt: bool,
        continue_final_message: bool,
        tools: list | None,
        template_kwargs: dict | None,
    ) -> str:
        """Exactly how Hone's trainer renders: apply_chat_template(tokenize=False) with the pinned template."""
        if not profile.chat_template:
            raise bad_request(NO_CHAT_TEMPLATE)
        kwargs = dict(template_kwargs or {})
        if tools:
            kwargs["tools"] = tools
        if continue_final_message:
            kwargs["continue_final_message"] = True
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                chat_template=profile.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        except Exception as e:  # template errors (raise_exception, bad roles) are the caller's
            raise bad_request(str(e)) from e
        assert isinstance(text, str)  # tokenize=False renders text
        return text

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def chat_prompt(self, text: str, add_special_tokens: bool, messages: list[dict]) -> tuple[list[int], Any]:
        """A rendered chat's token ids, image runs expanded, and its images' pixels (inference/vision_prompts.py)."""
        return vision_prompts.chat_prompt(self.engine, self.encode(text, add_special_tokens), messages)

    def _check_length(self, prompt_len: int, max_tokens: int | None) -> None:
        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"contains {prompt_len} input tokens. Please reduce the length of the input prompt.",
                "input_tokens",
            )
        if max_tokens is not None and prompt_len + max_tokens > limit:
            raise bad_request(
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
                f"maximum context length is {limit} tokens and your request has {prompt_len} input "
                f"tokens ({max_tokens} > {limit} - {prompt_len}).",
                "max_tokens",
            )

    def _sampling(self, body: ChatCompletionRequest | CompletionRequest, max_tokens: int) -> SamplingParams:
        """vLLM's SamplingParams checks; omitted values come from the model's generation config."""
        defaults = self.engine.defaults
        temperature = body.temperature if body.temperature is not None else defaults.get("temperature", 1.0)
        top_p = body.top_p if body.top_p is not None else defaults.get("top_p", 1.0)
        top_k = body.top_k if body.top_k is not None else defaults.get("top_k", 0)
        if body.n < 1:
            raise bad_request(f"n must be at least 1, got {body.n}.", "n")
        if temperature < 0:
            raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
        if not 0 < top_p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p")
        if top_k < -1:
            raise bad_request(f"top_k must be 0 (disable), or at least 1, got {top_k}.", "top_k")
        if max_tokens < 1:
            raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(s for s in body.stop or () if s)
        presence, frequency, repetition = logprobs.penalties(body, defaults)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=max(0, int(top_k)),
            seed=body.seed,
            stop=stop,
            stop_token_ids=tuple(body.stop_token_ids or ()),
            ignore_eos=body.ignore_eos,
            presence_penalty=presence,
            frequency_penalty=frequency,
            repetition_penalty=repetition,
            logprobs=logprobs.requested(body, isinstance(body, ChatCompletionRequest)),
        )
        if params.greedy and body.n > 1:
            raise bad_request(f"n must be 1 when using greedy sampling, got {body.n}.", "n")
        return params

    def _job(self, entry: LoraEntry | None, prompts: list[list[int]], params: SamplingParams, n: int) -> GenerationJob:
        return GenerationJob(
            prompts,
            params,
            n,
            self.models.profile(entry),
            adapter_key=entry.key if entry else None,
            adapter_path=entry.path if entry else None,
            adapter_name=entry.name if entry else None,
        )

    async def _constrain(
        self,
        job: GenerationJob,
        body: ChatCompletionRequest | CompletionRequest,
        tools: tool_calls.ToolPlan | None = None,
    ) -> None:
        """Holds the job's answers to its response_format's grammar, or to the calls its tool_choice forces; 400
        naming the field for a format that is not one or a schema that cannot be enforced. Compiled on a thread: a
        first grammar of a large vocabulary takes a while, and the event loop serves other requests meanwhile."""
        try:
            fmt, param, field = parse_output_format(body.response_format), "response_format", None
            forced = tools.forced_format() if tools is not None else None
            if forced is not None:
                if fmt is not None:
                    raise bad_request(
                        "response_format cannot be combined with a tool_choice that forces a tool call.",
                        "response_format",
                    )
                (fmt, field), param = forced, "tool_choice"
            if fmt is not None:
                stops = self.engine.stop_ids(job.profile, job.params)
                job.grammar = await asyncio.to_thread(self.engine.grammars.compile, fmt, stops, param, field)
        except FormatError as e:
            raise bad_request(str(e), e.param) from e

    def _chat_logprobs(self, job: GenerationJob, entries: list) -> dict | None:
        return None if job.params.logprobs is None else logprobs.chat_content(self.tokenizer, entries)

    def _completion_logprobs(self, job: GenerationJob, entries: list, offset: int = 0) -> dict | None:
        if job.params.logprobs is None:
            return None
        return logprobs.completion_logprobs(self.tokenizer, entries, offset)

    def _model_name(self, entry: LoraEntry | None) -> str:
        return entry.name if entry else self.models.base_names[0]

    # --- chat completions ---------------------------------------------------------------------------

    def prepare_chat(self, body: ChatCompletionRequest) -> tuple[GenerationJob, str, tool_calls.ToolPlan | None]:
        entry = self.models.resolve(body.model)
        tools = tool_calls.plan(body, self.models.tool_parser)
        text = self.render_chat(
            self.models.profile(entry),
            body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            tools=list(tools.tools) if tools else None,
            template_kwargs=body.chat_template_kwargs,
        )
        prompt, pixels = self.chat_prompt(text, body.add_special_tokens, body.messages)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        self._check_length(len(prompt), requested)
        max_tokens = requested if requested is not None else self.engine.max_model_len - len(prompt)
        job = self._job(entry, [prompt], self._sampling(body, max_tokens), body.n)
        job.pixel_values = pixels
        return job, self._model_name(entry), tools

    async def chat(self, body: ChatCompletionRequest, request_id: str) -> dict | AsyncIterator[str]:
        job, model, tools = self.prepare_chat(body)
        await self._constrain(job, body, tools)
        rid, created = f"chatcmpl-{request_id}", int(time.time())
        if body.stream:
            chunks = stream(self.engine, self.fingerprint, job, body, rid, created, model, "chat.completion.chunk")
            logprobs_of = functools.partial(self._chat_logprobs, job)
            return chat_responses.chunks(chunks, tools, logprobs_of, rid, created, model)
        results = await collect(self.engine, job)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                chat_responses.choice(i, r, tools, self._chat_logprobs(job, r["logprobs"]), bool(body.return_token_ids))
                for i, r in sorted(results.items())
            ],
            "service_tier": None,
            "system_fingerprint": self.fingerprint,
            "usage": usage(job, results),
            "prompt_logprobs": None,
            "prompt_token_ids": job.prompts[0] if body.return_token_ids else None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }

    # --- text completions ---------------------------------------------------------------------------

    def prepare_completion(self, body: CompletionRequest) -> tuple[GenerationJob, str]:
        entry = self.models.resolve(body.model)
        raw = body.prompt
        if isinstance(raw, str):
            prompts = [self.encode(raw, body.add_special_tokens)]
        elif raw and all(isinstance(p, int) for p in raw):
            prompts = [list(cast("list[int]", raw))]
        elif raw and all(isinstance(p, list) for p in raw):
            prompts = [list(p) for p in cast("list[list[int]]", raw)]
        else:
            prompts = [self.encode(p, body.add_special_tokens) for p in cast("list[str]", raw)]
        if not prompts or any(not p for p in prompts):
            raise bad_request("Prompt cannot be empty", "prompt")
        vocab = len(self.tokenizer)
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise bad_request(f"Token id out of vocabulary (size {vocab}).", "prompt")
        max_tokens = body.max_tokens if body.max_tokens is not None else 16  # vLLM's /v1/completions default
        for prompt in prompts:
            self._check_length(len(prompt), body.max_tokens)
        return self._job(entry, prompts, self._sampling(body, max_tokens), body.n), self._model_name(entry)

    async def completion(self, body: CompletionRequest, request_id: str) -> dict | AsyncIterator[str]:
        job, model = self.prepare_completion(body)
        await self._constrain(job, body)
        rid, created = f"cmpl-{request_id}", int(time.time())
        if body.stream:
            return self._completion_stream(job, body, rid, created, model)
        results = await collect(self.engine, job)
        ids = bool(body.return_token_ids)
        choices = [
            {
                "index": i,
                "text": r["text"],
                "logprobs": self._completion_logprobs(job, r["logprobs"]),
                "finish_reason": r["finish_reason"],
                "stop_reason": r["stop_reason"],
                "token_ids": r["token_ids"] if ids else None,
                "prompt_logprobs": None,
                "prompt_token_ids": job.prompts[i // job.n] if ids else None,
            }
            for i, r in sorted(results.items())
        ]
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": self.fingerprint,
            "usage": usage(job, results),
            "kv_transfer_params": None,
        }

    async def _completion_stream(
        self, job: GenerationJob, body: CompletionRequest, rid: str, created: int, model: str
    ) -> AsyncIterator[str]:
        sent: dict[int, int] = {}  # characters of each choice's text streamed so far: its tokens' text offsets
        async for item in stream(self.engine, self.fingerprint, job, body, rid, created, model, "text_completion"):
            if isinstance(item, str):
                yield item
                continue
            kind, event, usage = item
            if kind == "role":
                continue  # text completions have no role chunk
            last = isinstance(event, Finished)
            lps = self._completion_logprobs(job, event.logprobs, sent.get(event.index, 0))
            sent[event.index] = sent.get(event.index, 0) + len(event.text)
            data = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": event.index,
                        "text": event.text,
                        "logprobs": lps,
                        "finish_reason": event.finish_reason if last else None,
                        "stop_reason": event.stop_reason if last else None,
                    }
                ],
            }
            if usage is not None:
                data["usage"] = usage
            yield sse(data)

    # --- tokenizer utilities ------------------------------------------------------------------------

    def tokenize(self, body: TokenizeChatRequest | TokenizeCompletionRequest) -> dict:
        entry = self.models.resolve(body.model)
        if isinstance(body, TokenizeChatRequest):
            text = self.render_chat(
                self.models.profile(entry),
                body.messages,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
                tools=body.tools,
                template_kwargs=body.chat_template_kwargs,
            )
            tokens, pixels = self.chat_prompt(text, body.add_special_tokens, body.messages)  # runs expanded, as vLLM
        else:
            tokens, pixels = self.encode(body.prompt, body.add_special_tokens), None
        strs = self.tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None
        out = {"count": len(tokens), "max_model_len": self.engine.max_model_len, "tokens": tokens, "token_strs": strs}
        if isinstance(body, TokenizeChatRequest) and body.return_pixel_digest:  # Hone's extension: the parity gate's
            out["pixel_digest"] = vision_prompts.pixel_digest(pixels)
        return out

    def detokenize(self, body: DetokenizeRequest) -> dict:
        self.models.resolve(body.model)
        vocab = len(self.tokenizer)
        bad = [t for t in body.tokens if t < 0 or t >= vocab]
        if bad:
            raise bad_request(f"Token id {bad[0]} is out of vocabulary (size {vocab}).", "tokens")
        return {"prompt": self.tokenizer.decode(body.tokens)}


def new_request_id(header: str | None) -> str:
    """vLLM: the X-Request-Id header if given, else a random hex id."""
    return header or uuid.uuid4().hex
