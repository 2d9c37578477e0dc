"""Bringing an adapter trained elsewhere (Hone extension): `POST /v1/models/import` takes a PEFT LoRA adapter,
trained with peft or TRL anywhere, for one of the registered base models, and makes it a tuned model of the caller's
project that deploys, serves through the gateway and is continued by new jobs as a job's model is.

The archive is the one GET /v1/models/{model}/content streams (service/model_download.py): a tar, or a gzip, bzip2
or xz compressed one, of the adapter's folder, with an optional SHA256SUMS member. So a model taken away from one
Hone comes back into another. Everything is checked before anything is stored, each problem a 400 naming the file
and the field or tensor (`param` is `file`, `base_model`, `suffix`, `adapter_config.json:<field>` or
`adapter_model.safetensors:<tensor>`):

1. the form: `file`, `base_model` (a registered base model whose layers the control plane can read), `suffix`
   (as a job's);
2. the archive (`invalid_archive`): at most HONE_MAX_IMPORT_BYTES as sent and as unpacked, at most MAX_MEMBERS
   members, each a file or folder with a relative name without `..` (no links, devices, absolute paths or names
   given twice), and every file as its SHA256SUMS lists it when it has one;
3. the adapter's files (`invalid_adapter`): adapter_config.json and adapter_model.safetensors at its top; pickled
   weights (adapter_model.bin, .pt, ...) are refused, since unpickling runs whatever code the file carries;
4. adapter_config.json: a LoRA (`peft_type` LORA) of a causal language model, with a positive integer `r`, a positive
   `lora_alpha` and `target_modules` as a list of names; nothing that the serving path or a continuing job would not
   reproduce (DoRA, rsLoRA, rank or alpha patterns, a subset of layers, biases); the fleet's rules for serving
   (service/serve_compat.py `check_lora_servable`, as jobs are checked: `unservable_adapter`) and the engine's
   (inference/adapters.py `config_problems`). `base_model_name_or_path` is informational only;
5. adapter_model.safetensors' header (read with struct and json: no torch here): exactly a `lora_A` of [r, in] and a
   `lora_B` of [out, r] for every layer of the base model that `target_modules` names, in float dtypes, whose byte
   ranges fill the file.

Only adapter_config.json and adapter_model.safetensors are kept (other files, a download's tokenizer and Hone's
serving files included, are not: the model is served with its base model's tokenizer and chat template). They go
to `imports/{import id}/adapter/`, then `hone_import.json` (what was imported, which marks the folder for the
parity gate: service/deploy/parity.py), then the tuned_models row (origin `import`, no job). A failure on the way
deletes the folder again. An Idempotency-Key with the same form and archive answers the model made the first time."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from python_multipart.multipart import parse_options_header
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from hone_kernel import tiny_model
from hone_kernel.weights_archive import CHECKSUMS, compare_checksums, parse_checksums
from inference.adapters import config_problems
from service import idempotency
from service.auth import ProjectPrincipal
from service.base_models import BaseModel
from service.context import AppContext
from service.db.tables import IdempotencyKey, Project, TunedModel
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, PayloadTooLarge, excerpt
from service.ids import new_id
from service.jobs import fine_tuned_model_name
from service.models import tuned_model_api
from service.serve_compat import LoraFields, check_lora_servable, local_tensor_shapes, safetensors_header
from service.uploads import FIELD_LIMIT, MultipartUpload

log = logging.getLogger("hone.models")

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
IMPORT_FILE = "hone_import.json"  # written last beside an imported adapter: what was imported, and that it was
KEPT = (CONFIG, WEIGHTS)
# Weights saved with torch.save (pickle): loading them runs code the file carries
PICKLED = re.compile(r"^(adapter_model|pytorch_model)[^/]*\.(bin|pt|pth|pkl|pickle|ckpt)$")
FORM_FIELDS = ("base_model", "suffix")  # besides the `file` part
SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a job's suffix (service/schemas.py)
MAX_MEMBERS = 1000
MAX_CONFIG_BYTES = 1024 * 1024
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
PREFIX = "base_model.model."  # what PEFT puts before a module's name in the adapter's tensors
_CHUNK = 1 << 20


def _archive_error(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file", code=ErrorCode.INVALID_ARCHIVE)


def _adapter_error(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.INVALID_ADAPTER)


def _too_large(ctx: AppContext) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The adapter's archive is too large: the limit is {ctx.settings.files.max_import_bytes} bytes, as sent "
        "and as unpacked (HONE_MAX_IMPORT_BYTES).",
        param="file",
        code=ErrorCode.FILE_TOO_LARGE,
    )


# --- the upload: spooled to a private temporary file while the form streams in -------------------------------


class _Upload:
    def __init__(self, ctx: AppContext, boundary: bytes):
        self.ctx = ctx
        self.form = MultipartUpload(boundary, lambda _name: None)
        folder = ctx.settings.server.data_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # unlinked already: nothing outlives the request
        self.size = 0
        self.sha = hashlib.sha256()

    def flush(self) -> None:
        for chunk in self.form.pending:
            self.size += len(chunk)
            if self.size > self.ctx.settings.files.max_import_bytes:
                raise _too_large(self.ctx)
            self.sha.update(chunk)
            self.file.write(chunk)
        self.form.pending.clear()


async def import_adapter(
    ctx: AppContext,
    principal: ProjectPrincipal,
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    idempotency_key: str | None = None,
) -> dict:
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequest(
            "An import is multipart/form-data with 'file' (the adapter's tar), 'base_model' and 'suffix' fields.",
            param="file",
            code=ErrorCode.INVALID_CONTENT_TYPE,
        )
    limit = ctx.settings.files.max_import_bytes
    if content_length and content_length.isdigit() and int(content_length) > limit + 3 * FIELD_LIMIT:
        raise _too_large(ctx)
    upload = _Upload(ctx, options[b"boundary"])
    try:
        async for chunk in body:
            upload.form.write(chunk)
            if upload.form.pending:
                await run_in_threadpool(upload.flush)
        upload.form.finish()
        await run_in_threadpool(upload.flush)
        return await run_in_threadpool(_import, ctx, principal, upload, idempotency_key)
    finally:
        upload.file.close()


# --- the form ----------------------------------------------------------------------------------------


def _form(ctx: AppContext, upload: _Upload) -> tuple[BaseModel, str | None]:
    fields = upload.form.fields
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        field_name = excerpt(unknown[0])
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {field_name!r} (the form fields are 'file', 'base_model' and "
            "'suffix').",
            param=field_name,
            code=ErrorCode.UNKNOWN_PARAMETER,
        )
    if upload.form.filename is None:
        raise InvalidRequest(
            "Missing required parameter: 'file' (the adapter's folder as a tar).",
            param="file",
            code=ErrorCode.MISSING_REQUIRED_PARAMETER,
        )
    name = fields.get("base_model")
    if not name:
        raise InvalidRequest(
            "Missing required parameter: 'base_model'.", param="base_model", code=ErrorCode.MISSING_REQUIRED_PARAMETER
        )
    base = ctx.base_models.get(name)
    if base is None:
        raise InvalidRequest(
            f"base_model '{excerpt(name, NAME_CHARS)}' is not a base model of this server (GET /v1/models lists "
            "them); an adapter is imported for the base model it was trained on.",
            param="base_model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    suffix = fields.get("suffix") or None
    if suffix is not None and not SUFFIX.match(suffix):
        raise InvalidRequest(
            "suffix must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'.",
            param="suffix",
            code=ErrorCode.INVALID_VALUE,
        )
    return base, suffix


# --- the archive -------------------------------------------------------------------------------------


@dataclass
class _Archive:
    tar: tarfile.TarFile
    files: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # by name under the archive's top folder
    sha256: dict[str, str] = field(default_factory=dict)  # every file's with SHA256SUMS, else the kept ones

    def read(self, name: str) -> bytes:
        content = self.tar.extractfile(self.files[name])
        assert content is not None  # a regular file
        return content.read()

    def chunks(self, name: str) -> Iterator[bytes]:
        content = self.tar.extractfile(self.files[name])
        assert content is not None  # a regular file
        while chunk := content.read(_CHUNK):
            yield chunk


def _member_name(raw: str) -> str:
    """The member's name without `./` steps; an unsafe one is refused (whoever unpacks it would write outside
    the folder), though nothing here is ever written by a member's name."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\\" in raw or ".." in parts:
        raise _archive_error(
            f"The archive's member '{excerpt(raw, NAME_CHARS)}' has an absolute name or one with '..': an archive "
            "of an adapter's folder names its files within it."
        )
    return "/".join(parts)


def _open_archive(ctx: AppContext, file: IO[bytes]) -> _Archive:
    """Every member checked and every file hashed, before anything is read for what it holds."""
    limit = ctx.settings.files.max_import_bytes
    file.seek(0)
    try:
        tar = tarfile.open(fileobj=file, mode="r:*")  # the upload's file is closed when the request ends
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _archive_error(
            f"The file is not a tar archive (or a gzip, bzip2 or xz compressed one): {excerpt(exc, 200)}. Send the "
            "adapter's folder as GET /v1/models/{model}/content gives it, or `tar -cf adapter.tar FOLDER`."
        ) from None
    names: dict[str, tarfile.TarInfo] = {}
    unpacked = members = 0
    try:
        while (member := tar.next()) is not None:
            members += 1
            if members > MAX_MEMBERS:
                raise _archive_error(f"The archive has more than {MAX_MEMBERS} members; an adapter has a few files.")
            name = _member_name(member.name)
            if member.isdir() or not name:
                continue
            if not member.isfile() or member.issparse():
                what = "a link" if member.issym() or member.islnk() else "not a plain file"
                raise _archive_error(
                    f"The archive's member '{excerpt(member.name, NAME_CHARS)}' is {what}: an imported archive "
                    "holds files and folders only."
                )
            if name in names:
                raise _archive_error(f"The archive holds '{excerpt(name, NAME_CHARS)}' twice; which one is meant?")
            unpacked += member.size
            if unpacked > limit:
                raise _too_large(ctx)
            names[name] = member
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _archive_error(f"The archive cannot be read to its end: {excerpt(exc, 200)}.") from None
    archive = _Archive(tar, _under_top(names))
    checked = CHECKSUMS in archive.files
    try:
        for name in archive.files if checked else [n for n in KEPT if n in archive.files]:
            digest = hashlib.sha256()
            for chunk in archive.chunks(name):
                digest.update(chunk)
            archive.sha256[name] = digest.hexdigest()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise _archive_error(f"The archive cannot be read to its end: {excerpt(exc, 200)}.") from None
    if checked:
        try:
            listed = parse_checksums(archive.read(CHECKSUMS).decode("utf-8", "replace"))
            compare_checksums(listed, {n: d for n, d in archive.sha256.items() if n != CHECKSUMS})
        except ValueError as exc:
            raise _archive_error(
                f"{exc}. A file changed after SHA256SUMS was written, or the upload was damaged; nothing was stored."
            ) from None
    return archive


def _under_top(names: dict[str, tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    """The files by their names in the adapter's folder: `tar -cf a.tar FOLDER` and a download put every file in
    one top folder, `tar -C FOLDER -cf a.tar .` puts them at the top."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return {name.split("/", 1)[1]: member for name, member in names.items()}
    return names


def _check_files(archive: _Archive) -> None:
    pickled = sorted(name for name in archive.files if PICKLED.match(name))  # the adapter's own (files in
    # subfolders, a trainer's checkpoints among them, are neither read nor kept)
    if pickled:
        raise _adapter_error(
            f"{pickled[0]} holds pickled weights, which Hone does not load: unpickling runs whatever code the file "
            f"carries. Save the adapter as {WEIGHTS} (peft's save_pretrained does by default, safe_serialization="
            "True), or convert it with safetensors.torch.save_file on a machine you trust, and leave the .bin out.",
            param=f"file:{pickled[0]}",
        )
    for name in KEPT:
        if name not in archive.files:
            elsewhere = sorted(n for n in archive.files if n.rsplit("/", 1)[-1] == name)
            where = f" (found at {elsewhere[0]}: the adapter's folder must be the archive's top)" if elsewhere else ""
            raise _adapter_error(
                f"The archive has no {name}{where}: a PEFT LoRA adapter's folder holds {CONFIG} and {WEIGHTS}, as "
                "save_pretrained writes them.",
                param=f"file:{name}",
            )


# --- adapter_config.json -----------------------------------------------------------------------------


def _param(name: str) -> str:
    return f"{CONFIG}:{name}"


# Fields of a LoRA config the serving path and a continuing job (trainer/modeling.py: r, lora_alpha and
# target_modules over every layer) would not reproduce, and what each means when it is set.
_NOT_REPRODUCED = {
    "use_dora": "DoRA (weight-decomposed) adapters",
    "use_rslora": "rank-stabilised LoRA (alpha / sqrt(r)), which a job continuing it would scale as alpha / r",
    "rank_pattern": "ranks that differ by layer",
    "alpha_pattern": "alphas that differ by layer",
    "layers_to_transform": "adapters of some layers only",
    "layers_pattern": "adapters of some layers only",
    "lora_bias": "LoRA biases",
    "fan_in_fan_out": "fan_in_fan_out weights (GPT-2's Conv1D layers)",
    "trainable_token_indices": "trained token embeddings (new vocabulary)",
    "target_parameters": "adapters of parameters rather than layers",
}


def _check_config(ctx: AppContext, archive: _Archive) -> dict[str, Any]:
    member = archive.files[CONFIG]
    if member.size > MAX_CONFIG_BYTES:
        raise _adapter_error(f"{CONFIG} is {member.size} bytes; a LoRA config is a few hundred.", param=CONFIG)
    try:
        config = json.loads(archive.read(CONFIG))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _adapter_error(f"{CONFIG} is not valid JSON: {excerpt(exc, 200)}.", param=CONFIG) from None
    if not isinstance(config, dict):
        raise _adapter_error(f"{CONFIG} must hold a JSON object.", param=CONFIG)
    if config.get("peft_type") != "LORA":
        raise _adapter_error(
            f"{CONFIG} says peft_type {excerpt(config.get('peft_type'))!r}: only LoRA adapters (peft_type 'LORA') "
            "are imported, the kind Hone's engines hot-load.",
            param=_param("peft_type"),
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise _adapter_error(
            f"{CONFIG} says task_type {excerpt(config['task_type'])!r}: Hone serves causal language models "
            "(task_type 'CAUSAL_LM').",
            param=_param("task_type"),
        )
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise _adapter_error(f"{CONFIG}: r must be a positive integer, not {excerpt(rank)!r}.", param=_param("r"))
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise _adapter_error(
            f"{CONFIG}: lora_alpha must be a positive number, not {excerpt(alpha)!r}.", param=_param("lora_alpha")
        )
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _adapter_error(
            f'{CONFIG}: target_modules must be a list of module names (e.g. ["q_proj", "v_proj"]), not '
            f"{excerpt(targets)!r}; a pattern is not read here, so save the adapter with the names it adapts.",
            param=_param("target_modules"),
        )
    for key, what in _NOT_REPRODUCED.items():
        if config.get(key):
            raise _adapter_error(
                f"{CONFIG} sets {key}: {what} cannot be imported; Hone serves and continues plain LoRA adapters "
                "(r, lora_alpha and target_modules over every layer).",
                param=_param(key),
            )
    if config.get("bias", "none") != "none":
        raise _adapter_error(
            f"{CONFIG} sets bias {excerpt(config['bias'])!r}: only bias 'none' is served.", param=_param("bias")
        )
    saved = config.get("modules_to_save") or []
    fields = LoraFields(_param("r"), _param("target_modules"), _param("modules_to_save"))
    check_lora_servable(
        rank, targets, ctx.settings.serving.max_lora_rank, fields, saved if isinstance(saved, list) else [saved]
    )
    try:
        problems = config_problems(config, ctx.settings.serving.max_lora_rank)  # the engines' own rules, last
    except (TypeError, ValueError) as exc:
        problems = [f"it cannot be read as a LoRA config ({excerpt(exc, 200)})."]
    if problems:
        raise InvalidRequest(f"{CONFIG}: {' '.join(problems)}", param=CONFIG, code=ErrorCode.UNSERVABLE_ADAPTER)
    return config


# --- the base model's layers and adapter_model.safetensors -----------------------------------------------


def llama_linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) features of every projection of a Llama model's layers, by module name, from its config."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    layer = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inner, hidden),
        "mlp.up_proj": (inner, hidden),
        "mlp.down_proj": (hidden, inner),
    }
    return {f"model.layers.{i}.{m}": shape for i in range(config["num_hidden_layers"]) for m, shape in layer.items()}


def base_linear_shapes(base: BaseModel) -> dict[str, tuple[int, int]]:
    """(out, in) of each 2-D weight of the base model, by module name: hone-tiny's from its architecture, a model
    in a local folder's from its safetensors headers (serve_compat.local_tensor_shapes). A base whose layers
    cannot be read here is a 400: an adapter for it could not be checked."""
    if base.vision:
        raise InvalidRequest(
            f"Adapters for image-text base models ('{base.name}') cannot be imported yet: their checkpoints name "
            "their layers otherwise than the loaded model does, so the adapter's tensors cannot be checked here.",
            param="base_model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    if base.source == f"builtin:{tiny_model.TINY_MODEL}":
        return llama_linear_shapes(tiny_model.ARCHITECTURE)
    shapes = None if base.source.startswith("builtin:") else local_tensor_shapes(base.source)
    if not shapes:
        raise InvalidRequest(
            f"The layers of base model '{base.name}' cannot be read here: its source {excerpt(base.source)!r} is "
            "not a folder of safetensors on this server (a Hugging Face id is only downloaded by trainers and "
            "engines), so an adapter for it cannot be checked. Register it from a local folder to import adapters.",
            param="base_model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    return {
        name[: -len(".weight")]: (s[0], s[1]) for name, s in shapes.items() if name.endswith(".weight") and len(s) == 2
    }


def _tensor_error(name: str, message: str) -> InvalidRequest:
    return _adapter_error(f"{WEIGHTS}: tensor '{excerpt(name, NAME_CHARS)}' {message}", param=f"{WEIGHTS}:{name}")


def _check_tensors(archive: _Archive, base: BaseModel, config: dict[str, Any]) -> None:
    member = archive.files[WEIGHTS]
    content = archive.tar.extractfile(member)
    assert content is not None  # a regular file
    try:
        header = safetensors_header(content, member.size)  # type: ignore[arg-type]  # a binary file object
        data_bytes = member.size - content.tell()
    except ValueError as exc:
        raise _adapter_error(f"{WEIGHTS} is not a safetensors file: {exc}.", param=WEIGHTS) from None
    rank, targets = config["r"], set(config["target_modules"])
    layers = base_linear_shapes(base)
    expected = {module: shape for module, shape in layers.items() if module.rsplit(".", 1)[-1] in targets}
    if not expected:
        raise _adapter_error(
            f"{CONFIG}: target_modules {sorted(targets)} name no layer of base model '{base.name}'.",
            param=_param("target_modules"),
        )
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for name in sorted(header):  # the same tensor named first, whatever order the file has them in
        if name == "__metadata__":
            continue
        entry = header[name]
        module, _, kind = name.removesuffix(".weight").rpartition(".")
        module = module.removeprefix(PREFIX)
        if not name.endswith(".weight") or kind not in ("lora_A", "lora_B"):
            if "lora_embedding" in name or "trainable_tokens" in name:
                raise _tensor_error(name, "adapts the vocabulary, which vLLM cannot hot-load with a LoRA adapter.")
            if "lora_magnitude" in name:
                raise _tensor_error(name, "is a DoRA magnitude, which Hone does not serve.")
            raise _tensor_error(
                name,
                "is not a LoRA weight (lora_A or lora_B of a layer): whole layers saved beside the adapter "
                "(modules_to_save) are not served.",
            )
        if module not in layers:
            raise _tensor_error(
                name, f"adapts '{excerpt(module, NAME_CHARS)}', a layer base model '{base.name}' does not have."
            )
        if module not in expected:
            raise _tensor_error(name, f"adapts '{module}', which target_modules {sorted(targets)} does not name.")
        out_features, in_features = layers[module]
        want = [rank, in_features] if kind == "lora_A" else [out_features, rank]
        if not isinstance(entry, dict):
            raise _tensor_error(name, "has no dtype, shape and data_offsets in the header.")
        shape, dtype, offsets = entry.get("shape"), entry.get("dtype"), entry.get("data_offsets")
        if shape != want:
            raise _tensor_error(
                name,
                f"has shape {excerpt(shape)}, but base model '{base.name}' has {module} of {out_features} x "
                f"{in_features} (out x in), so at r {rank} it must be {want}: the adapter was trained for another "
                "base model, or its config's r is not its weights'.",
            )
        if dtype not in FLOAT_BYTES:
            raise _tensor_error(name, f"is {excerpt(dtype)!r}; LoRA weights are one of {', '.join(FLOAT_BYTES)}.")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _tensor_error(name, "has no [start, end] data_offsets in the header.")
        start, end = offsets
        if end - start != math.prod(want) * FLOAT_BYTES[dtype]:
            raise _tensor_error(
                name, f"takes {end - start} bytes, but {want} {dtype} takes {math.prod(want) * FLOAT_BYTES[dtype]}."
            )
        spans.append((start, end, name))
        seen.add(name.removesuffix(".weight").removeprefix(PREFIX))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise _tensor_error(name, f"starts at byte {start} of the data, not {position}: the file is damaged.")
        position = end
    if position != data_bytes:
        raise _adapter_error(
            f"{WEIGHTS}: its tensors take {position} bytes, but the file holds {data_bytes} after the header: it is "
            "truncated or damaged.",
            param=WEIGHTS,
        )
    for module in sorted(expected):
        for kind in ("lora_A", "lora_B"):
            if f"{module}.{kind}" not in seen:
                raise _tensor_error(
                    f"{PREFIX}{module}.{kind}.weight",
                    f"is missing: target_modules {sorted(targets)} names {module} of base model '{base.name}', and "
                    "a job continuing this adapter adapts every layer it names.",
                )


# --- storing it --------------------------------------------------------------------------------------


def _fingerprint(base: BaseModel, suffix: str | None, archive_sha256: str) -> str:
    body = {"base_model": base.name, "suffix": suffix, "archive_sha256": archive_sha256}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _prefix(import_id: str) -> str:
    return f"imports/{import_id}/adapter/"


def _replayed(ctx: AppContext, principal: ProjectPrincipal, key: str, request_sha: str) -> dict | None:
    """The model an earlier import with this Idempotency-Key made, or None (none, expired, or deleted since)."""
    with ctx.db.write() as session:
        import_id = idempotency.replayed_object(session, principal.project_id, key, request_sha)
        if import_id is None:
            return None
        model = session.execute(
            select(TunedModel).where(
                TunedModel.project_id == principal.project_id, TunedModel.storage_prefix == _prefix(import_id)
            )
        ).scalar()
        if model is None:  # deleted since: the key makes a new one
            session.delete(session.get(IdempotencyKey, (principal.project_id, key)))
            session.flush()
            return None
        return tuned_model_api(model)


def _import(ctx: AppContext, principal: ProjectPrincipal, upload: _Upload, key: str | None) -> dict:
    base, suffix = _form(ctx, upload)
    request_sha = _fingerprint(base, suffix, upload.sha.hexdigest())
    if key is not None and (replayed := _replayed(ctx, principal, key, request_sha)) is not None:
        return replayed
    archive = _open_archive(ctx, upload.file)
    _check_files(archive)
    config = _check_config(ctx, archive)
    _check_tensors(archive, base, config)
    try:
        return _store(ctx, principal, archive, base, suffix, config, key, request_sha)
    except IntegrityError:
        if key is None:
            raise
        # A concurrent import with the same key won (its row and key are in): answer with its model.
        replayed = _replayed(ctx, principal, key, request_sha)
        if replayed is None:
            raise
        return replayed


def _store(
    ctx: AppContext,
    principal: ProjectPrincipal,
    archive: _Archive,
    base: BaseModel,
    suffix: str | None,
    config: dict[str, Any],
    key: str | None,
    request_sha: str,
) -> dict:
    import_id = new_id("ftimport-")
    prefix, now = _prefix(import_id), int(time.time())
    try:
        for name in KEPT:
            writer = ctx.storage.writer(prefix + name)
            try:
                for chunk in archive.chunks(name):
                    writer.write(chunk)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        marker = {
            "origin": "import",
            "base_model": base.name,
            "base_model_name_or_path": config.get("base_model_name_or_path"),  # as the adapter said; not used
            "imported_at": now,
            "sha256": {name: archive.sha256[name] for name in KEPT},
        }
        ctx.storage.put_bytes(prefix + IMPORT_FILE, json.dumps(marker, indent=2).encode())
        with ctx.db.write() as session:
            slug = session.execute(select(Project.slug).where(Project.id == principal.project_id)).scalar_one()
            name = fine_tuned_model_name(base.name, slug, suffix, import_id)
            row = TunedModel(
                id=name,
                project_id=principal.project_id,
                job_id=None,
                base_model=base.name,
                created_at=now,
                storage_prefix=prefix,
                origin="import",
            )
            session.add(row)
            if key is not None:
                idempotency.remember(session, principal.project_id, key, request_sha, import_id)
            session.flush()
            answer = tuned_model_api(row)
    except BaseException:
        try:
            ctx.storage.delete_prefix(prefix)
        except Exception:
            log.exception("an import that failed left objects behind", extra={"prefix": prefix})
        raise
    return answer
