"""`python -m tests.fake_trainer --spec URL`: the real trainer's `main` with `trainer.loop` replaced by the fake
(see tests/fake_trainer/__init__.py). torch, transformers and peft cannot be imported here: an import of one of them
fails, so the fake provably stays cheap (and `route_transformers_logs` finds no transformers to route)."""

from __future__ import annotations

import sys

for _heavy in ("torch", "transformers", "peft"):
    sys.modules[_heavy] = None  # type: ignore[assignment]  # `import torch` now raises ImportError

from tests.fake_trainer import loop  # noqa: E402

sys.modules["trainer.loop"] = loop  # what trainer.__main__.main imports the Run from

from trainer.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
