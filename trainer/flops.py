"""Model FLOPs utilisation: the FLOPs a step needs per token, over what the accelerator can do at peak.

Per token: forward 2N; backward 2N through activations, plus 2N for weight gradients when every weight
trains (LoRA's frozen weights get none); plus causal attention, 4 * layers * hidden * sequence length."""

from __future__ import annotations

import math
import time

from hone_kernel.trainer_contract import Hyperparameters

# Dense bf16 peak of the accelerators Hone is run on, by a fragment of torch.cuda.get_device_name().
_PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


def flops_per_token(n_params: int, layers: int, hidden: int, seq_len: float, *, full: bool) -> float:
    return (6 if full else 4) * n_params + 4 * layers * hidden * seq_len


def peak_flops(device_name: str | None) -> float | None:
    """None where the peak is not known (CPUs, unlisted GPUs): no MFU is reported then."""
    for fragment, peak in _PEAK_BF16:
        if device_name and fragment in device_name:
            return peak
    return None


def mfu(tokens_per_second: float, per_token: float, peak: float | None) -> float | None:
    return tokens_per_second * per_token / peak if peak else None


def live_figures(
    step: int,
    total_steps: int,
    metrics: dict,
    step_seconds: float,
    step_tokens: int,
    hp: Hyperparameters,
    shape: tuple[int, int, int],
    peak: float | None,
) -> dict:
    """What the control plane exports as a job's training metrics while it runs. `shape`: the base's (parameters,
    layers, hidden size); `peak`: the FLOP/s of all the run's devices together (None: unknown, no MFU)."""
    figures = {
        "step": step,
        "total_steps": total_steps,
        "step_seconds": round(step_seconds, 6),
        "tokens_per_second": round(step_tokens / step_seconds, 3) if step_seconds > 0 else 0.0,
        "step_at": round(time.time(), 3),
    }
    for key in ("train_loss", "valid_loss"):
        value = metrics.get(key)
        if isinstance(value, float) and math.isfinite(value):
            figures[key] = value
    if peak and step_tokens:
        n_params, layers, hidden = shape
        per_token = flops_per_token(
            n_params, layers, hidden, step_tokens / hp.batch_size, full=hp.tuning_mode == "full"
        )
        ratio = mfu(figures["tokens_per_second"], per_token, peak)
        assert ratio is not None  # the peak is known
        figures["mfu"] = round(ratio, 5)
    return figures
