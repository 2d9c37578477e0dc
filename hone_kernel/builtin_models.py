"""The base models Hone builds itself ("builtin:<name>" sources): where each is built, by whom (the trainer, the
local engine backend through `python -m hone_kernel.builtin_models NAME DIR`, the Kubernetes fetcher)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hone_kernel import tiny_model, tiny_vision_model

BUILDERS: dict[str, Callable[[Path], Path]] = {
    tiny_model.TINY_MODEL: tiny_model.build,
    tiny_vision_model.TINY_VISION_MODEL: tiny_vision_model.build,
}


class UnknownBuiltin(ValueError):
    pass


def build(name: str, target: Path) -> Path:
    builder = BUILDERS.get(name)
    if builder is None:
        raise UnknownBuiltin(f"unknown built-in model {name!r} (built-in: {', '.join(sorted(BUILDERS))})")
    return builder(Path(target))


if __name__ == "__main__":  # `python -m hone_kernel.builtin_models NAME DIR`
    import sys

    print(build(sys.argv[1], Path(sys.argv[2])))
