"""How "auto" hyperparameters resolve from the base model's defaults and the dataset's shape."""

from types import SimpleNamespace

import pytest

from service.base_models import TINY_DEFAULTS, BaseModelRegistry, TrainingDefaults
from service.training_plan import (
    LLAMA_PROJECTIONS,
    DatasetShape,
    auto_batch_size,
    auto_epochs,
    resolve_hyperparameters,
    trainer_hyperparameters,
)

GENERIC = TrainingDefaults()


def shape(examples: int, mean_tokens: float = 100.0) -> DatasetShape:
    return DatasetShape(examples, mean_tokens)


def test_generic_epochs_follow_openais_rule_of_examples_seen():
    assert auto_epochs(shape(10), GENERIC) == 10  # 10 * 3 < 100 -> ceil(100 / 10)
    assert auto_epochs(shape(2), GENERIC) == 25  # capped at max_epochs
    assert auto_epochs(shape(100), GENERIC) == 3
    assert auto_epochs(shape(20000), GENERIC) == 1  # 25000 // 20000
    assert auto_epochs(shape(9000), GENERIC) == 2  # 9000 * 3 > 25000 -> 25000 // 9000


def test_batch_size_comes_from_a_token_budget_and_keeps_steps_in_an_epoch():
    assert auto_batch_size(shape(100_000, 128), GENERIC) == 128  # 16384 tokens per step / 128
    assert auto_batch_size(shape(100_000, 8), GENERIC) == 256  # capped
    assert auto_batch_size(shape(100_000, 50_000), GENERIC) == 1  # one long example per step
    assert auto_batch_size(shape(80, 128), GENERIC) == 10  # 80 examples: at least 8 steps per epoch
    # hone-tiny: ~256 tokens per step
    assert auto_batch_size(shape(288, 60), TINY_DEFAULTS) == 4
    assert auto_batch_size(shape(240, 115), TINY_DEFAULTS) == 2


def test_dataset_shape_estimates_tokens_from_the_files_bytes():
    file = SimpleNamespace(example_count=200, bytes=200 * 450, dataset_media=None)
    assert DatasetShape.of(file, GENERIC).mean_tokens == pytest.approx(100.0)
    assert DatasetShape.of(SimpleNamespace(example_count=None, bytes=0, dataset_media=None), GENERIC) == DatasetShape(
        1, 1.0
    )


def test_resolution_fills_every_knob_and_keeps_given_values():
    method = {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 4,
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                "lora_rank": 8,
                "lr_scheduler": "linear",
            }
        },
    }
    hp = resolve_hyperparameters(method, shape(300, 100), GENERIC, 4096)["supervised"]["hyperparameters"]
    assert hp == {
        "n_epochs": 4,
        "batch_size": 37,
        "learning_rate_multiplier": 1.0,
        "tuning_mode": "lora",
        "lora_rank": 8,
        "lora_alpha": 16.0,
        "lora_dropout": 0.0,
        "lora_target_modules": LLAMA_PROJECTIONS,
        "warmup_ratio": 0.03,
        "lr_scheduler": "linear",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_length": 2048,
    }
    assert method["supervised"]["hyperparameters"]["batch_size"] == "auto"  # the input is not modified


def test_resolution_is_idempotent_so_a_retry_trains_the_same():
    method = {"type": "supervised", "supervised": {"hyperparameters": {}}}
    once = resolve_hyperparameters(method, shape(288, 60), TINY_DEFAULTS, 2048)
    # a retry sees another shape estimate (say the defaults changed); resolved values stay
    assert resolve_hyperparameters(once, shape(50, 500), GENERIC, 2048) == once


def test_max_length_is_capped_by_the_server_and_full_tuning_has_no_lora_knobs():
    method = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": "full", "max_length": 8192}}}
    hp = resolve_hyperparameters(method, shape(50), GENERIC, 1024)["supervised"]["hyperparameters"]
    assert hp["max_length"] == 1024 and "lora_rank" not in hp


def test_batch_size_never_exceeds_the_dataset_and_dpo_gets_a_beta():
    method = {"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 64}}}
    hp = resolve_hyperparameters(method, shape(12), GENERIC, 2048)["dpo"]["hyperparameters"]
    assert hp["batch_size"] == 12 and hp["beta"] == 0.1 and hp["n_epochs"] == 9
    assert hp["learning_rate_multiplier"] == GENERIC.dpo_learning_rate_multiplier  # DPO's auto rate is a fraction


def test_learning_rate_is_the_models_default_unless_the_server_sets_one():
    method = resolve_hyperparameters(
        {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0.5}}},
        shape(100),
        TINY_DEFAULTS,
        2048,
    )
    ctx = SimpleNamespace(
        settings=SimpleNamespace(training=SimpleNamespace(lora_learning_rate=None, full_learning_rate=None))
    )
    assert trainer_hyperparameters(ctx, method, TINY_DEFAULTS)["learning_rate"] == TINY_DEFAULTS.lora_learning_rate / 2
    ctx.settings.training.lora_learning_rate = 1e-4
    spec_hp = trainer_hyperparameters(ctx, method, TINY_DEFAULTS)
    assert spec_hp["learning_rate"] == 5e-5 and spec_hp["lr_scheduler"] == "cosine" and spec_hp["lora_rank"] == 16


def test_base_models_can_carry_their_own_defaults():
    registry = BaseModelRegistry(
        {"acme/small": "/models/small", "acme/big": {"source": "/models/big", "training": {"lora_learning_rate": 5e-5}}}
    )
    assert registry.get("acme/small").training == GENERIC
    assert registry.get("acme/big").training.lora_learning_rate == 5e-5
    assert registry.get("hone-tiny").training is TINY_DEFAULTS
    with pytest.raises(ValueError, match="unknown training default"):
        BaseModelRegistry({"x": {"source": "/m", "training": {"lora_lr": 1}}})
