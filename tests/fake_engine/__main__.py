"""`python -m tests.fake_engine --model DIR ...`: the FAKE engine (see the package docstring), started with the
built-in engine's own argument parser and server, around `FakeEngine` instead of the torch `Engine`."""

from __future__ import annotations

import logging
import os
import sys

from inference.__main__ import _template, parse_args
from inference.logs import configure_logging

log = logging.getLogger("inference")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(logging.INFO)
    import uvicorn

    from inference.models import ServingModels
    from inference.server import create_app
    from tests.fake_engine.engine import FakeEngine

    served = args.served_model_name or args.model
    runtime_lora = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")
    engine = FakeEngine(
        args.model,
        served,
        max_model_len=args.max_model_len,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_cpu_loras=args.max_cpu_loras,
        max_lora_rank=args.max_lora_rank,
        chat_template=_template(args.chat_template),
    )
    app = create_app(
        ServingModels(engine, served, args.model),  # type: ignore[arg-type]  # duck-typed Engine
        api_key=args.api_key,
        allow_runtime_lora=runtime_lora,
    )
    log.info(
        "serving %r on http://%s:%d (FAKE engine for tests, max_model_len %d, runtime LoRA updating %s)",
        served,
        args.host,
        args.port,
        engine.max_model_len,
        "on" if runtime_lora else "off",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
