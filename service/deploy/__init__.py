"""Deploying endpoints: the loop that makes the engines match the endpoints (deployer.py), where each endpoint is
served and by which engine (placement.py, with the EngineKey type), getting an adapter's weights to the engine
and loading it (adapters.py), and the parity gate an endpoint passes before it is ready (parity.py)."""

from __future__ import annotations


class DeployError(Exception):
    """A deploy attempt that failed: `code` goes on the endpoint's error; `retry` False fails it at once."""

    def __init__(self, code: str, message: str, *, retry: bool = True):
        super().__init__(message)
        self.code, self.message, self.retry = code, message, retry
