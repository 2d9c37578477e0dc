"""Graders for a project: `/v1/fine_tuning/alpha/graders/run` and `/validate`, and what evals grade with.

The graders themselves (hone_kernel/graders) know nothing of projects; this module adds what does: a model
grader's model must be one the project can call (a base model, or one of its own tuned models or checkpoints),
and it is called through the gateway, as the project's own requests are, so its tokens count as the project's
usage. Python graders run in sandbox processes, at most `grader_processes` at once in this server process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from hone_kernel import trainer_contract as contract
from hone_kernel.graders import run as grading
from hone_kernel.graders import spec
from service import external_models
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.errors import ApiError, BadGateway, ErrorCode, InvalidRequest, excerpt

RETRY_BACKOFF_S = (0.5, 2.0, 5.0)
_RETRIED_STATUS = frozenset({502, 503, 504})


class GatewayModels:
    """A model grader's calls, as a project's chat completions through the gateway; 502/503/504 and refused
    connections are retried `retries` times."""

    def __init__(self, ctx: AppContext, gateway: Any, project_id: str, retries: int):
        self.ctx, self.gateway, self.project_id, self.retries = ctx, gateway, project_id, retries

    async def chat(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> grading.ModelReply:
        if model.startswith(external_models.PREFIX):
            return await self._external(model, messages, params)
        body = {"model": model, "messages": messages, **params}
        raw = json.dumps(body).encode()

        async def send() -> tuple[int, bytes]:
            try:
                response = await self.gateway.relay(self.project_id, "/v1/chat/completions", raw, body, None)
            except ApiError as exc:
                if exc.status_code in _RETRIED_STATUS:
                    raise _Transient(exc.message) from None
                raise grading.ModelCallFailed(f"{model}: {exc.message}") from None
            return response.status_code, bytes(response.body)

        return await self._retrying(model, send, _RETRIED_STATUS)

    async def _external(self, name: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> grading.ModelReply:
        """A registered external model (service/external_models.py), called as OpenAI's chat completions."""
        target = await run_in_threadpool(external_models.target, self.ctx, self.project_id, name)
        if target is None:
            raise grading.ModelCallFailed(f"{name}: no such external model in this project")
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        body = {"model": target.model, "messages": messages, **params}

        async with httpx.AsyncClient(timeout=self.ctx.settings.serving.gateway_timeout_s) as http:

            async def send() -> tuple[int, bytes]:
                try:
                    response = await http.post(f"{target.base_url}/chat/completions", json=body, headers=headers)
                except httpx.HTTPError as exc:
                    raise _Transient(f"{type(exc).__name__} calling {target.base_url}") from None
                return response.status_code, response.content

            return await self._retrying(name, send, _RETRIED_STATUS | {429})

    async def _retrying(self, name: str, send, retried: frozenset[int]) -> grading.ModelReply:
        """`send` until it answers a status outside `retried`, `retries` times more at most, with backoff."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, content = await send()
            except _Transient as exc:
                if last:
                    raise grading.ModelCallFailed(f"{name}: {exc}") from None
            else:
                if status not in retried or last:
                    return _reply(name, status, content)
            await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
        raise AssertionError("unreachable: the last attempt returns or raises")


class _Transient(Exception):
    """A call that may succeed if tried again (a 502/503/504 from the gateway, a connection error)."""


def _reply(model: str, status: int, content: bytes) -> grading.ModelReply:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if status != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        raise grading.ModelCallFailed(f"{model} answered HTTP {status}: {excerpt(message or content, 300)}")
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise grading.ModelCallFailed(f"{model} answered without a choice") from None
    return grading.ModelReply(
        text,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        choice.get("finish_reason"),
    )


class Graders:
    """Grading for this server process: the sandbox's limits and slots, and the gateway for model graders."""

    def __init__(self, ctx: AppContext, gateway: Any):
        self.ctx, self.gateway = ctx, gateway
        settings = ctx.settings.graders
        self.limits = settings.sandbox_limits()
        self.python_slots = asyncio.Semaphore(settings.grader_processes)

    def env(self, project_id: str) -> grading.GradingEnv:
        models = GatewayModels(self.ctx, self.gateway, project_id, self.ctx.settings.graders.grader_model_retries)
        return grading.GradingEnv(limits=self.limits, models=models, python_slots=self.python_slots)

    async def model_chat(self, project_id: str, model: str, messages: list[dict], params: dict) -> dict[str, Any]:
        """A training run's call of a model its project may call (trainer contract MODEL_CHAT): a grader's model or
        a distillation teacher. A model it cannot call is a 400; one that does not answer after the retries, a 502."""
        allowed = await run_in_threadpool(self._callable, project_id, model)
        if not allowed:
            raise InvalidRequest(
                f"The model '{excerpt(model)}' does not exist or you do not have access to it.",
                code=ErrorCode.MODEL_NOT_FOUND,
            )
        try:
            reply = await self.env(project_id).models.chat(model, messages, params)  # type: ignore[union-attr]
        except grading.ModelCallFailed as exc:
            raise BadGateway(str(exc), code=ErrorCode.ENDPOINT_ERROR) from None
        return contract.message(
            contract.ModelAnswer(reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason)
        )

    def _callable(self, project_id: str, model: str) -> bool:
        with self.ctx.db.read() as session:
            return external_models.callable_model(self.ctx, session, project_id, model)

    async def check_model(self, principal: ProjectPrincipal, model: str, param: str) -> None:
        """400 naming `param` unless the project can call `model`."""
        await run_in_threadpool(self._check_models, principal.project_id, {model}, param, "")

    async def check_models(self, principal: ProjectPrincipal, grader: Any, param: str = "grader") -> None:
        """400 naming the grader's model when the project cannot call it (another project's model does not exist
        for this one)."""
        models = spec.models_of(grader)
        if models:
            await run_in_threadpool(self._check_models, principal.project_id, models, f"{param}.model", "grader's ")

    def _check_models(self, project_id: str, models: set[str], param: str, whose: str) -> None:
        with self.ctx.db.read() as session:
            for model in sorted(models):
                external_models.require_callable(
                    self.ctx, session, project_id, model, param=param, role=f"{whose}model"
                )

    async def validate(self, principal: ProjectPrincipal, grader: Any) -> dict[str, Any]:
        await self.check_models(principal, grader)
        return {"grader": grader.model_dump(exclude_none=True)}

    async def run(self, principal: ProjectPrincipal, grader: Any, model_sample: str, item: Any) -> dict[str, Any]:
        await self.check_models(principal, grader)
        sample = grading.sample_from_text(model_sample)
        result = await grading.grade(grader, sample, {} if item is None else item, self.env(principal.project_id))
        return result.response()
