"""Importing an adapter trained elsewhere (POST /v1/models/import, `client.models.import_adapter`, `hone models
import`): a real PEFT LoRA adapter of hone-tiny, made here with peft as a laptop would make it, is imported, served
by the built-in engine through the gateway with the answers peft itself gives, and continued by a job; and every
archive or adapter that could not serve (or could not be read safely) is refused whole, with nothing stored.

The refusals run on both backends (the session's servers); the end-to-end tests on a module server of their own
with a training slot (SQLite and files, the built-in engine)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

import hone
from hone_kernel.weights_archive import pack, verify
from tests.support import (
    MODEL_CACHE,
    REPO,
    HoneServer,
    chat_dataset,
    s3_client,
    wait_endpoint,
    wait_job,
)

RANK, ALPHA, TARGETS = 4, 8.0, ["q_proj", "v_proj"]
TENSOR = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"  # the first tensor the import checks
PROMPT = [{"role": "user", "content": "my invoice shows a double charge"}]


def tiny_base() -> Path:
    from hone_kernel.tiny_model import build

    return build(MODEL_CACHE / "hone-tiny")


def peft_adapter(folder: Path, *, seed: int = 0, hidden_size: int | None = None, **lora) -> Path:
    """A PEFT LoRA adapter saved with save_pretrained, as peft or TRL on a laptop saves one: of hone-tiny, or of a
    Llama like it but `hidden_size` wide. A and B are seeded random (B non-zero: the adapter changes answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if hidden_size is None:
        model = AutoModelForCausalLM.from_pretrained(tiny_base())
    else:
        config = AutoConfig.from_pretrained(tiny_base())
        config.hidden_size, config.head_dim = hidden_size, hidden_size // config.num_attention_heads
        model = AutoModelForCausalLM.from_config(config)
    options = {"r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS, "task_type": "CAUSAL_LM"} | lora
    peft_model = get_peft_model(model, LoraConfig(**options))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(folder)
    return folder


def tar_of(files: dict[str, bytes], *, top: str = "adapter") -> bytes:
    """A tar of `files` under `top/` (as `tar -cf a.tar adapter` makes it), no SHA256SUMS."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def packed(folder: Path) -> bytes:
    out = io.BytesIO()
    pack(folder, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return peft_adapter(tmp_path_factory.mktemp("laptop") / "tickets-adapter")


def _import(http: httpx.Client, data: bytes, base_model: str = "hone-tiny", **fields) -> httpx.Response:
    form = {"base_model": base_model, **fields} if base_model else fields
    return http.post("/v1/models/import", files={"file": ("adapter.tar", data, "application/x-tar")}, data=form)


def _stored_imports(server: HoneServer, request) -> list[str]:
    """Every object under imports/ in the server's storage."""
    if server.backend == "postgres-s3":
        s3 = s3_client(request.getfixturevalue("moto").url)
        listed = s3.list_objects_v2(Bucket="hone-tests", Prefix="blobs/imports/")
        return sorted(o["Key"] for o in listed.get("Contents", []))
    root = server.data_dir / "blobs" / "imports"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- on both backends ----------------------------------------------------------------------------------


def test_an_imported_adapter_is_a_model_of_its_project_only_and_comes_back_as_it_went(
    server, project, other_project, adapter, request
):
    """Imported as a tar with SHA256SUMS (the SDK's packing, a download's shape), it is listed with a job's kind
    of name, downloads as what was imported (plus hone_import.json), re-imports as a new model, and replays for the
    same Idempotency-Key; to another project it is missing in every way a missing model is; deleted, it is gone
    from storage."""
    before = _stored_imports(server, request)
    with project.http() as http:
        reply = _import(http, packed(adapter), suffix="laptop")
        assert reply.status_code == 200, reply.text
        model = reply.json()
        name = model["id"]
        slug = name.split(":")[2]
        assert name.startswith(f"ft:hone-tiny:{slug}:laptop:ftimport-") and model["object"] == "model"
        assert model["owned_by"] == project.project_id
        assert name in [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert http.get(f"/v1/models/{name}").json() == model

        download = http.get(f"/v1/models/{name}/content")
        assert download.status_code == 200
        files = verify(download.content)
        assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "hone_import.json"}
        for kept in ("adapter_config.json", "adapter_model.safetensors"):  # stored byte for byte
            assert files[kept] == hashlib.sha256((adapter / kept).read_bytes()).hexdigest()
        again = _import(http, download.content)  # a download is an import's archive
        assert again.status_code == 200 and again.json()["id"].startswith(f"ft:hone-tiny:{slug}::ftimport-")

        keyed = [
            http.post(
                "/v1/models/import",
                files={"file": ("a.tar", packed(adapter))},
                data={"base_model": "hone-tiny"},
                headers={"Idempotency-Key": "import-1"},
            )
            for _ in range(2)
        ]
        assert keyed[0].status_code == keyed[1].status_code == 200 and keyed[0].json() == keyed[1].json()
        reused = http.post(
            "/v1/models/import",
            files={"file": ("a.tar", packed(adapter))},
            data={"base_model": "hone-tiny", "suffix": "other"},
            headers={"Idempotency-Key": "import-1"},
        )
        assert reused.status_code == 400 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert len(_stored_imports(server, request)) == len(before) + 3 * 3  # three models, three objects each

    missing = name.rsplit(":", 1)[0] + ":ftimport-doesnotexist"
    with other_project.http() as http:
        assert name not in [m["id"] for m in http.get("/v1/models").json()["data"]]
        for path in (f"/v1/models/{name}", f"/v1/models/{name}/content"):
            theirs, nobodys = http.get(path), http.get(path.replace(name, missing))
            assert theirs.status_code == nobodys.status_code == 404
            assert theirs.json()["error"]["message"].replace(name, "X") == nobodys.json()["error"]["message"].replace(
                missing, "X"
            )
        assert http.post("/v1/endpoints", json={"model": name}).status_code == 404
        assert http.delete(f"/v1/models/{name}").status_code == 404
        job = http.post(
            "/v1/fine_tuning/jobs", json={"model": name, "training_file": "file-x"}
        )  # continuing it: as unknown as a missing model
        assert job.status_code == 400 and job.json()["error"]["code"] == "model_not_available"

    with project.http() as http:
        assert http.delete(f"/v1/models/{name}").json()["deleted"] is True
        assert http.get(f"/v1/models/{name}/content").status_code == 404
    assert len(_stored_imports(server, request)) == len(before) + 2 * 3


def _config_edit(adapter: Path, **changes) -> dict[str, bytes]:
    files = files_of(adapter)
    files["adapter_config.json"] = json.dumps(json.loads(files["adapter_config.json"]) | changes).encode()
    return files


def _pickled(adapter: Path) -> dict[str, bytes]:
    import torch
    from safetensors.torch import load_file

    out = io.BytesIO()
    torch.save(load_file(adapter / "adapter_model.safetensors"), out)
    return {"adapter_config.json": (adapter / "adapter_config.json").read_bytes(), "adapter_model.bin": out.getvalue()}


def _unsafe(kind: str, adapter: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files_of(adapter).items():
            info = tarfile.TarInfo(f"adapter/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("adapter/../../etc/cron.d/evil" if kind == "traversal" else "adapter/tokenizer.json")
        if kind == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"boom"))
    return out.getvalue()


def _bad_sums(adapter: Path) -> bytes:
    archive = bytearray(packed(adapter))
    listing = f"{hashlib.sha256((adapter / 'adapter_config.json').read_bytes()).hexdigest()}  adapter_config.json"
    at = archive.find(listing.encode())
    archive[at] = ord("0" if archive[at] != ord("0") else "1")  # one digest of SHA256SUMS no longer the file's
    return bytes(archive)


# (case, archive from the module's adapter, base model, code, param, words of the message)
REFUSED = [
    (
        "wrong hidden size",
        lambda a, tmp: tar_of(files_of(peft_adapter(tmp / "wide", hidden_size=256))),
        "hone-tiny",
        "invalid_adapter",
        f"adapter_model.safetensors:{TENSOR}",
        ["has shape [4, 256]", "192 x 192", "must be [4, 192]"],
    ),
    (
        "config's r is not the weights'",
        lambda a, tmp: tar_of(_config_edit(a, r=8)),
        "hone-tiny",
        "invalid_adapter",
        f"adapter_model.safetensors:{TENSOR}",
        ["has shape [4, 192]", "must be [8, 192]"],
    ),
    (
        "pickled weights",
        lambda a, tmp: tar_of(_pickled(a)),
        "hone-tiny",
        "invalid_adapter",
        "file:adapter_model.bin",
        ["pickled weights", "runs whatever code"],
    ),
    (
        "path traversal",
        lambda a, tmp: _unsafe("traversal", a),
        "hone-tiny",
        "invalid_archive",
        "file",
        ["adapter/../../etc/cron.d/evil", "'..'"],
    ),
    ("a link", lambda a, tmp: _unsafe("link", a), "hone-tiny", "invalid_archive", "file", ["is a link"]),
    (
        "bad SHA256SUMS",
        lambda a, tmp: _bad_sums(a),
        "hone-tiny",
        "invalid_archive",
        "file",
        ["does not match its SHA256SUMS", "adapter_config.json"],
    ),
    (
        "modules_to_save",
        lambda a, tmp: tar_of(files_of(peft_adapter(tmp / "saves", modules_to_save=["lm_head"]))),
        "hone-tiny",
        "unservable_adapter",
        "adapter_config.json:modules_to_save",
        ["modules_to_save ['lm_head']", "vLLM cannot hot-load"],
    ),
    (
        "rank above the fleet's",
        lambda a, tmp: tar_of(_config_edit(a, r=128)),
        "hone-tiny",
        "unservable_adapter",
        "adapter_config.json:r",
        ["max_lora_rank 64"],
    ),
    (
        "not LoRA",
        lambda a, tmp: tar_of(_config_edit(a, peft_type="IA3")),
        "hone-tiny",
        "invalid_adapter",
        "adapter_config.json:peft_type",
        ["'IA3'", "only LoRA adapters"],
    ),
    (
        "rsLoRA",
        lambda a, tmp: tar_of(_config_edit(a, use_rslora=True)),
        "hone-tiny",
        "invalid_adapter",
        "adapter_config.json:use_rslora",
        ["alpha / sqrt(r)"],
    ),
    (
        "truncated weights",
        lambda a, tmp: tar_of(
            files_of(a) | {"adapter_model.safetensors": files_of(a)["adapter_model.safetensors"][:-64]}
        ),
        "hone-tiny",
        "invalid_adapter",
        "adapter_model.safetensors",
        ["truncated"],
    ),
    ("not a tar", lambda a, tmp: b"PK\x03\x04 a zip", "hone-tiny", "invalid_archive", "file", ["not a tar archive"]),
    (
        "no weights",
        lambda a, tmp: tar_of({"adapter_config.json": (a / "adapter_config.json").read_bytes()}),
        "hone-tiny",
        "invalid_adapter",
        "file:adapter_model.safetensors",
        ["has no adapter_model.safetensors"],
    ),
    (
        "unknown base model",
        lambda a, tmp: packed(a),
        "acme/nope",
        "model_not_available",
        "base_model",
        ["'acme/nope' is not a base model"],
    ),
    (
        "a base whose layers cannot be read",
        lambda a, tmp: packed(a),
        "acme/tiny-chat",  # the session server's second base model: a folder that does not exist here
        "model_not_available",
        "base_model",
        ["cannot be read here"],
    ),
]


def test_what_could_not_serve_or_be_read_safely_is_refused_naming_the_file_and_field(
    server, project, adapter, tmp_path, request
):
    before = _stored_imports(server, request)
    with project.http() as http:
        models = http.get("/v1/models").json()
        for case, archive, base, code, param, says in REFUSED:
            reply = _import(http, archive(adapter, tmp_path), base_model=base)
            error = reply.json()["error"]
            assert (reply.status_code, error["code"], error["param"]) == (400, code, param), (case, error)
            for words in says:
                assert words in error["message"], (case, error["message"])
        assert http.get("/v1/models").json() == models
        no_base = _import(http, packed(adapter), base_model="")
        assert no_base.json()["error"]["param"] == "base_model"
        unknown = _import(http, packed(adapter), rank="4")
        assert unknown.json()["error"]["code"] == "unknown_parameter"
    assert _stored_imports(server, request) == before  # nothing written for any of them


# --- end to end: serving and continuing ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_server(tmp_path_factory):
    """SQLite and files, one training slot, the built-in engine."""
    server = HoneServer(tmp_path_factory.mktemp("imports"), {"HONE_LOCAL_SLOTS": "1"})
    try:
        yield server, server.new_project("laptop team")
    finally:
        server.stop()


def peft_answer(folder: Path | None, messages: list[dict], max_tokens: int) -> str:
    """What the adapter (or the plain base, with None) answers greedily when peft loads it on hone-tiny."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import chat_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_base())
    model = AutoModelForCausalLM.from_pretrained(tiny_base())
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder)
    model.eval()
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    ids = torch.tensor([chat_ids(tokenizer, messages, None, generation_prompt=True)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
    if out and out[-1] in stops:
        out = out[:-1]
    return tokenizer.decode(out, skip_special_tokens=True)


def test_an_imported_adapter_serves_through_the_gateway_what_peft_answers_with_it(trainer_server, adapter):
    server, project = trainer_server
    with hone.Client(base_url=server.base_url, api_key=project.api_key) as client:
        model = client.models.import_adapter(adapter, base_model="hone-tiny", suffix="laptop")  # a folder
    with project.http() as http:
        created = http.post("/v1/endpoints", json={"model": model.id})
        assert created.status_code == 200, created.text
        endpoint = wait_endpoint(http, model.id)
    assert endpoint["state"] == "ready" and endpoint["kind"] == "adapter", endpoint
    assert endpoint["fine_tuning_job_id"] is None and endpoint["base_model"] == "hone-tiny"
    reply = project.openai().chat.completions.create(model=model.id, messages=PROMPT, temperature=0, max_tokens=12)
    served = reply.choices[0].message.content
    assert served == peft_answer(adapter, PROMPT, 12)
    assert served != peft_answer(None, PROMPT, 12)  # the adapter is what answers, not the base


def test_a_job_continues_an_imported_adapter_with_its_shape(trainer_server, adapter, tmp_path):
    """`hone models import` a tar; a job on it takes r, lora_alpha and target_modules from its config, loads its
    weights (a trainer refuses an adapter that does not fit the model exactly) and succeeds."""
    server, project = trainer_server
    archive = tmp_path / "adapter.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(adapter, arcname=".")  # `tar -C adapter -czf adapter.tar.gz .`
    env = {**os.environ, "HONE_BASE_URL": server.base_url, "HONE_API_KEY": project.api_key}
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "hone",
            "models",
            "import",
            str(archive),
            "--base-model",
            "hone-tiny",
            "--suffix",
            "cli",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    name = imported.stdout.strip()
    assert name.startswith("ft:hone-tiny:") and ":cli:ftimport-" in name

    client = project.openai()
    training_file = client.files.create(file=("train.jsonl", chat_dataset(12)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=name,
        training_file=training_file.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    hp = job.to_dict()["method"]["supervised"]["hyperparameters"]
    assert (hp["lora_rank"], hp["lora_alpha"], sorted(hp["lora_target_modules"])) == (RANK, ALPHA, sorted(TARGETS))
    assert hp["tuning_mode"] == "lora" and job.model == name
    done = wait_job(client, job.id, lambda j: j.status in ("succeeded", "failed"), timeout=300)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:hone-tiny:")
