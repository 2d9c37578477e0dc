"""Chat completions of other models from inside a training run (a score_model or label_model grader's model, a
distillation teacher), through the control plane's internal MODEL_CHAT route: it calls them as the job's project
(its gateway, or the external model it registered), so the trainer holds no engine address or API key.

Bounded and retried: each call has `timeout_s` in all; connection errors and 503/504 are retried with backoff
inside that time. What still fails is ModelCallFailed, which a grade turns into `model_grader_server_error` (reward
0), never a crashed step."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from hone_kernel import trainer_contract as contract
from hone_kernel.graders.run import ModelCallFailed, ModelReply

# The control plane retries the model itself (HONE_GRADER_MODEL_RETRIES) and answers 502 when it gave up; these are
# the control plane's own passing troubles (a restart behind a proxy, a database outage).
RETRIED_STATUS = frozenset({503, 504})
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)


class ControlPlaneModels:
    """A hone_kernel.graders.run.ModelCaller over MODEL_CHAT. Make one per event loop (it holds an async client)."""

    def __init__(self, callback_url: str, token: str, job_id: str, timeout_s: float, concurrency: int = 8):
        self.url = f"{callback_url.rstrip('/')}/internal/fine_tuning/jobs/{job_id}{contract.MODEL_CHAT}"
        self.token, self.timeout_s = token, timeout_s
        self.slots = asyncio.Semaphore(concurrency)
        self._http: httpx.AsyncClient | None = None

    async def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> ModelReply:
        body = contract.message(contract.ModelChat(model, _storable(messages), params))
        deadline = time.monotonic() + self.timeout_s
        attempt, last_error = 0, "no attempt"
        async with self.slots:
            if self._http is None:
                self._http = httpx.AsyncClient(headers={"Authorization": f"Bearer {self.token}"})
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ModelCallFailed(f"{model}: no answer within {self.timeout_s:g} s ({last_error})")
                try:
                    resp = await self._http.post(self.url, json=body, timeout=left)
                except httpx.HTTPError as exc:
                    last_error = f"{type(exc).__name__} calling the control plane"
                else:
                    if resp.status_code == 200:
                        answer = contract.ModelAnswer(**resp.json())
                        return ModelReply(
                            answer.text, answer.prompt_tokens, answer.completion_tokens, answer.finish_reason
                        )
                    last_error = f"HTTP {resp.status_code}: {_message(resp)}"
                    if resp.status_code not in RETRIED_STATUS:
                        raise ModelCallFailed(f"{model}: {last_error}")
                pause = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _storable(messages: list[dict]) -> list[dict]:
    """A sampled answer may decode to NUL characters (byte-level tokens), which the control plane refuses in any
    request: they reach the grader's model as U+FFFD, as a user would see them."""
    return [{k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in m.items()} for m in messages]


def _message(resp: httpx.Response) -> str:
    try:
        error = resp.json().get("error") or {}
        return str(error.get("message") or resp.text)[:300]
    except (ValueError, AttributeError):
        return resp.text[:300]
