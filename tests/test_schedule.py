"""The learning-rate schedule, and every resolved knob reaching the trainer's spec as the trainer reads it."""

import json
import math
from types import SimpleNamespace

import pytest

from hone_kernel.trainer_contract import Hyperparameters
from service.base_models import TINY_DEFAULTS
from service.training_plan import DatasetShape, resolve_hyperparameters, trainer_hyperparameters
from trainer.schedule import MIN_FACTOR, lr_factor, warmup_steps


def test_warmup_then_cosine_linear_or_constant():
    assert warmup_steps(100, 0.03) == 3 and warmup_steps(10, 0.03) == 1 and warmup_steps(100, 0.0) == 0
    ramp = [lr_factor(s, 100, 3, "cosine") for s in range(3)]
    assert ramp == pytest.approx([0.25, 0.5, 0.75]) and lr_factor(3, 100, 3, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 100, 3, "cosine") == pytest.approx(MIN_FACTOR)
    middle = 3 + (100 - 3) / 2
    assert lr_factor(int(middle), 100, 3, "cosine") == pytest.approx(MIN_FACTOR + (1 - MIN_FACTOR) * 0.5, abs=0.02)
    assert lr_factor(100, 100, 3, "linear") == pytest.approx(MIN_FACTOR)
    assert lr_factor(50, 100, 0, "linear") == pytest.approx(MIN_FACTOR + (1 - MIN_FACTOR) * 0.5)
    assert lr_factor(99, 100, 3, "constant") == 1.0
    cosine = [lr_factor(s, 100, 3, "cosine") for s in range(3, 101)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))  # never rises after warmup
    with pytest.raises(ValueError):
        lr_factor(5, 10, 0, "exponential")


def test_every_resolved_knob_reaches_the_trainer():
    method = {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "weight_decay": 0.05,
                "max_grad_norm": 0.5,
                "warmup_ratio": 0.1,
                "lr_scheduler": "linear",
                "lora_rank": 8,
                "lora_dropout": 0.1,
                "learning_rate_multiplier": 2.0,
            }
        },
    }
    resolved = resolve_hyperparameters(method, DatasetShape(288, 60), TINY_DEFAULTS, 2048)
    ctx = SimpleNamespace(
        settings=SimpleNamespace(training=SimpleNamespace(lora_learning_rate=None, full_learning_rate=None))
    )
    # through JSON, as spec.json carries it, into the dataclass the trainer builds from it
    hp = Hyperparameters(**json.loads(json.dumps(trainer_hyperparameters(ctx, resolved, TINY_DEFAULTS))))
    assert (hp.weight_decay, hp.max_grad_norm, hp.warmup_ratio, hp.lr_scheduler) == (0.05, 0.5, 0.1, "linear")
    assert (hp.lora_rank, hp.lora_alpha, hp.lora_dropout) == (8, 16.0, 0.1)
    assert math.isclose(hp.learning_rate, 2 * TINY_DEFAULTS.lora_learning_rate)
    assert (hp.n_epochs, hp.batch_size) == (17, 4)  # 4800 examples seen / 288; ~256 tokens a step / 60
