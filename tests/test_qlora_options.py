"""QLoRA's options as the API takes, checks and resolves them, and as the spec carries them to the trainer; the
continuation rules; the memory fit per tuning mode. (The trainer and the parity gate: tests/test_qlora.py.)"""

from __future__ import annotations

import json
import time

import pytest

from hone_kernel.trainer_contract import TrainSpec
from tests.support import jsonl
from tests.test_qlora import spec, ticket

# --- the API, the plan and the contract ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The control plane in process (SQLite, file storage), with a local base model of 1.5B parameters (a
    safetensors header only) and trainers of 8 GB."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    tmp = tmp_path_factory.mktemp("api")
    big = tmp / "big-model"
    big.mkdir()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [150_000, 10_000], "data_offsets": [0, 0]}}).encode()
    (big / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    settings = Settings(
        data_dir=tmp / "data",
        admin_api_key="sk-admin-test",
        local_slots=0,
        auto_deploy=False,
        base_models={"big": str(big)},
        trainer_memory_gb=8,
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": "Bearer sk-admin-test"}
        project = client.post("/v1/organization/projects", json={"name": "qlora"}, headers=admin).json()
        account = client.post(
            f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "t"}, headers=admin
        ).json()
        client.headers["Authorization"] = f"Bearer {account['api_key']['value']}"
        upload = client.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", jsonl([ticket(i) for i in range(12)]))},
        )
        client.file_id = upload.json()["id"]  # type: ignore[attr-defined]
        yield client


def create(api, hyperparameters: dict, *, legacy: bool = False, model: str = "hone-tiny"):
    body = {"model": model, "training_file": api.file_id}
    if legacy:
        body["hyperparameters"] = hyperparameters
    else:
        body["method"] = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    return api.post("/v1/fine_tuning/jobs", json=body)


@pytest.mark.parametrize(
    "hyperparameters, field",
    [
        ({"tuning_mode": "lora", "quant_type": "fp4"}, "quant_type"),
        ({"compute_dtype": "float16"}, "compute_dtype"),  # tuning_mode auto: lora
        ({"tuning_mode": "full", "double_quant": False}, "double_quant"),
    ],
)
def test_quantization_options_without_qlora_are_refused_naming_the_field(api, hyperparameters, field):
    reply = create(api, hyperparameters)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == f"method.supervised.hyperparameters.{field}"
    assert 'set tuning_mode "qlora"' in error["message"]


def test_quantization_options_are_refused_in_legacy_hyperparameters_too_and_checked_for_type(api):
    reply = create(api, {"double_quant": True}, legacy=True)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "hyperparameters.double_quant"
    for bad in ({"double_quant": "yes"}, {"quant_type": "int4"}, {"compute_dtype": "fp8"}):
        reply = create(api, {"tuning_mode": "qlora", **bad})
        assert reply.status_code == 400, bad
        assert reply.json()["error"]["param"] == f"method.supervised.hyperparameters.{next(iter(bad))}"


def test_a_qlora_job_is_accepted_with_its_options_and_auto_ones_pass_with_lora(api):
    deadline = time.monotonic() + 30
    while api.get(f"/v1/files/{api.file_id}").json()["status"] != "processed":
        assert time.monotonic() < deadline, "the training file was not validated"
        time.sleep(0.1)
    asked = {"tuning_mode": "qlora", "quant_type": "fp4", "double_quant": False, "lora_rank": 8}
    reply = create(api, asked)
    assert reply.status_code == 200, reply.text
    assert asked.items() <= reply.json()["method"]["supervised"]["hyperparameters"].items()
    auto = create(api, {"tuning_mode": "lora", "quant_type": "auto", "compute_dtype": "auto"})
    assert auto.status_code == 200, auto.text


def test_a_base_model_that_does_not_fit_the_trainer_in_its_mode_is_refused_naming_the_lighter_one(api):
    reply = create(api, {"tuning_mode": "full"}, model="big")  # 1.5B x 8 bytes = 12 GB > 80% of 8 GB
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == "method.supervised.hyperparameters.tuning_mode"
    assert "use tuning_mode 'lora'" in error["message"] and "HONE_TRAINER_MEMORY_GB" in error["message"]


def test_weight_memory_per_mode():
    from service.serve_compat import weight_memory_bytes

    n = 8_000_000_000
    lora, full = weight_memory_bytes(n, {"tuning_mode": "lora"}), weight_memory_bytes(n, {"tuning_mode": "full"})
    qlora = weight_memory_bytes(n, {"tuning_mode": "qlora"})
    assert lora == 16e9 and full == 64e9 and weight_memory_bytes(n, {}) == lora
    assert 4.0e9 < qlora < 4.2e9 and qlora / lora < 0.27  # 4 bits and double-quantized constants
    assert weight_memory_bytes(n, {"tuning_mode": "qlora", "double_quant": False}) == 4.5e9


def test_qlora_resolves_its_options_and_the_lora_shape():
    from types import SimpleNamespace

    from service.base_models import TrainingDefaults
    from service.training_plan import DatasetShape, resolve_hyperparameters, trainer_hyperparameters

    method = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": "qlora"}}}
    on_gpu = resolve_hyperparameters(method, DatasetShape(300, 100), TrainingDefaults(), 2048, on_gpu=True)
    hp = on_gpu["supervised"]["hyperparameters"]
    assert (hp["quant_type"], hp["double_quant"], hp["compute_dtype"]) == ("nf4", True, "bfloat16")
    assert hp["lora_rank"] == 16 and hp["lora_alpha"] == 32 and len(hp["lora_target_modules"]) == 7
    on_cpu = resolve_hyperparameters(method, DatasetShape(300, 100), TrainingDefaults(), 2048, on_gpu=False)
    assert on_cpu["supervised"]["hyperparameters"]["compute_dtype"] == "float32"
    ctx = SimpleNamespace(settings=SimpleNamespace(training=SimpleNamespace(lora_learning_rate=None)))
    trainer = trainer_hyperparameters(ctx, on_gpu, TrainingDefaults())  # type: ignore[arg-type]
    assert trainer["tuning_mode"] == "qlora" and trainer["compute_dtype"] == "bfloat16" and trainer["lora_rank"] == 16
    lora = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": "lora"}}}
    resolved = resolve_hyperparameters(lora, DatasetShape(300, 100), TrainingDefaults(), 2048)
    assert "quant_type" not in resolved["supervised"]["hyperparameters"]
    assert "compute_dtype" not in trainer_hyperparameters(ctx, resolved, TrainingDefaults())  # type: ignore[arg-type]


def test_compute_dtype_follows_whether_the_executor_gives_trainers_a_gpu(tmp_path):
    from service.settings import Settings
    from service.training_plan import trainer_on_gpu

    assert not trainer_on_gpu(Settings(data_dir=tmp_path))
    assert trainer_on_gpu(Settings(data_dir=tmp_path, cuda_visible_devices="0,1"))
    assert trainer_on_gpu(Settings(data_dir=tmp_path, executor="kubernetes"))
    assert not trainer_on_gpu(Settings(data_dir=tmp_path, executor="kubernetes", k8s_gpus_per_job=0))


def test_the_spec_carries_the_lora_shape_and_quantization_of_qlora_only(tmp_path):
    def written(mode: str) -> dict:
        return json.loads(spec(tmp_path, tuning_mode=mode, quant_type="fp4").to_json())["hyperparameters"]

    qlora, lora, full = written("qlora"), written("lora"), written("full")
    assert qlora["quant_type"] == "fp4" and qlora["double_quant"] is True and qlora["lora_rank"] == 16
    assert "quant_type" not in lora and "compute_dtype" not in lora and lora["lora_rank"] == 16
    assert not any(k.startswith("lora_") or k in ("quant_type", "double_quant") for k in full)
    assert TrainSpec.from_json(spec(tmp_path, quant_type="fp4").to_json()).hyperparameters.quant_type == "fp4"


def test_continuing_an_adapter_with_qlora_is_allowed_and_a_full_model_is_refused():
    from service.errors import InvalidRequest
    from service.job_creation import _inherit_shape
    from service.models import Parent

    adapter = Parent(
        "ft:a",
        "hone-tiny",
        "jobs/a/adapter/",
        {"tuning_mode": "lora", "lora_rank": 8, "lora_alpha": 16.0, "lora_target_modules": ["q_proj"]},
    )
    asked = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": "qlora"}}}
    hp = _inherit_shape(asked, adapter, "ft:a")["supervised"]["hyperparameters"]
    assert hp["tuning_mode"] == "qlora" and hp["lora_rank"] == 8 and hp["lora_target_modules"] == ["q_proj"]
    auto = {"type": "supervised", "supervised": {"hyperparameters": {}}}
    assert _inherit_shape(auto, adapter, "ft:a")["supervised"]["hyperparameters"]["tuning_mode"] == "lora"
    full = Parent("ft:f", "hone-tiny", "jobs/f/adapter/", {"tuning_mode": "full"})
    with pytest.raises(InvalidRequest) as refused:
        _inherit_shape(asked, full, "ft:f")
    assert refused.value.param == "method.supervised.hyperparameters.tuning_mode"
    assert "is fully tuned: its weights are not an adapter" in refused.value.message
