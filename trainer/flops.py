"""Model FLOPs utilisation: the FLOPs a step needs per token, over what the accelerator can do at peak.

Per token: forward 2N; backward 2N through activations, plus 2N for weight gradients when every weight
trains (LoRA's frozen weights get none); plus causal attention, 4 * layers * hidden * sequence length."""

from __future__ import annotations

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
