"""How "auto" hyperparameters resolve, the way OpenAI resolves them once a job starts."""

from service.training_plan import auto_batch_size, auto_epochs, resolve_hyperparameters


def test_auto_epochs_follow_the_cookbook_heuristic():
    assert auto_epochs(10) == 10  # 10 * 3 < 100 -> 100 // 10
    assert auto_epochs(2) == 25  # capped at 25
    assert auto_epochs(100) == 3
    assert auto_epochs(20000) == 1  # 25000 // 20000
    assert auto_epochs(9000) == 2  # 9000 * 3 > 25000 -> 25000 // 9000


def test_auto_batch_size_is_small_for_small_sets_and_capped():
    assert auto_batch_size(12) == 1
    assert auto_batch_size(5000) == 10
    assert auto_batch_size(10_000_000) == 256


def test_resolution_keeps_given_values_and_hone_extensions():
    method = {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": "auto", "lora_rank": 8}}}
    resolved = resolve_hyperparameters(method, 300)
    hp = resolved["supervised"]["hyperparameters"]
    assert hp == {"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 2.0, "lora_rank": 8}
    assert method["supervised"]["hyperparameters"]["batch_size"] == "auto"  # the input is not modified


def test_batch_size_never_exceeds_the_dataset_and_dpo_gets_a_beta():
    method = {"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 64}}}
    hp = resolve_hyperparameters(method, 12)["dpo"]["hyperparameters"]
    assert hp["batch_size"] == 12 and hp["beta"] == 0.1 and hp["n_epochs"] == 8
