"""`python -m inference --model DIR --served-model-name NAME ...`: the built-in engine, with `vllm serve`'s flag
names so one launcher builds either command line. Unknown flags are an error."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hone_kernel.jsonlog import route_transformers_logs
from inference.adapters import LORA_RANKS
from inference.logs import configure_logging
from inference.tool_parsers import BUILTIN_PARSERS, parser

log = logging.getLogger("inference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    p.add_argument("--model", required=True, help="model folder (transformers format)")
    p.add_argument("--served-model-name", help="name clients use (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--max-cpu-loras", type=int, default=None, help="default: --max-loras")
    p.add_argument("--max-lora-rank", type=int, default=16, choices=LORA_RANKS)
    p.add_argument("--max-model-len", type=int, default=None, help="default: the model's max_position_embeddings")
    p.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY") or None,
        help="required on /v1 routes (default: $VLLM_API_KEY, as vLLM)",
    )
    p.add_argument("--chat-template", default=None, help="Jinja file or inline template for base requests")
    p.add_argument(
        "--limit-mm-per-prompt",
        type=_limits,
        default={},
        help="images a request may hold, as vLLM: '{\"image\": 10}' (a vision model; default 10)",
    )
    p.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='tool_choice "auto": the model decides, --tool-call-parser reads its calls (vLLM\'s flag)',
    )
    p.add_argument("--tool-call-parser", choices=sorted(BUILTIN_PARSERS), default=None, help="the family's format")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    args = p.parse_args(argv)
    if args.max_loras < 1:
        p.error("--max-loras must be at least 1")
    if args.max_cpu_loras is None:
        args.max_cpu_loras = args.max_loras
    if args.max_cpu_loras < args.max_loras:  # vLLM's LoRAConfig check
        p.error(f"max_cpu_loras ({args.max_cpu_loras}) must be >= max_loras ({args.max_loras})")
    if args.max_model_len is not None and args.max_model_len < 2:
        p.error("--max-model-len must be at least 2")
    if args.enable_auto_tool_choice and not args.tool_call_parser:  # vLLM's startup check
        p.error("--enable-auto-tool-choice requires --tool-call-parser")
    return args


def _limits(value: str) -> dict[str, int]:
    try:
        limits = json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {value!r}") from None
    if (
        not isinstance(limits, dict)
        or set(limits) - {"image"}
        or not all(isinstance(v, int) and v >= 0 for v in limits.values())
    ):
        raise argparse.ArgumentTypeError('expected {"image": N}: the built-in engine reads images, no other media')
    return limits


def _template(value: str | None) -> str | None:
    """vLLM's --chat-template: a file path, else the template itself."""
    if value is None:
        return None
    path = Path(value)
    return path.read_text() if path.is_file() else value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(logging.INFO)  # JSON lines naming the engine ($HONE_ENDPOINT_ENGINE, $HONE_ENDPOINT_ID)
    import uvicorn

    from inference.engine import Engine
    from inference.models import ServingModels
    from inference.server import create_app

    route_transformers_logs()

    served = args.served_model_name or args.model
    # Read at startup, as vLLM does: without it the LoRA routes do not exist (404).
    runtime_lora = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")
    engine = Engine(
        args.model,
        served,
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_cpu_loras=args.max_cpu_loras,
        max_lora_rank=args.max_lora_rank,
        chat_template=_template(args.chat_template),
        images_per_prompt=args.limit_mm_per_prompt.get("image", 10),
    )
    tools = parser(args.tool_call_parser) if args.enable_auto_tool_choice else None
    app = create_app(
        ServingModels(engine, served, args.model, tools), api_key=args.api_key, allow_runtime_lora=runtime_lora
    )
    log.info(
        "serving %r on http://%s:%d (device %s, %s, max_model_len %d, runtime LoRA updating %s)",
        served,
        args.host,
        args.port,
        engine.device,
        str(engine.dtype).removeprefix("torch."),
        engine.max_model_len,
        "on" if runtime_lora else "off",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, log_level="warning", access_log=False)
    engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
