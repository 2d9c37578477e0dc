"""Images in process: the dataset checks, the trainer's rendering (token runs, loss mask, truncation, packing, resume),
the training plan's token estimate, the registry's vision entries, and the engine's refusals. Real model (hone-tiny-
vision, built here), real processor, real images; the end-to-end flow is tests/test_vision.py."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from examples import shapes
from hone_kernel import images as image_checks
from hone_kernel.datasets import validate_bytes
from hone_kernel.tiny_vision_model import IMAGE_TOKENS, build
from hone_kernel.vision import VisionInputs
from service.base_models import BaseModelRegistry
from tests.support import MODEL_CACHE
from tests.test_trainer_core import run_training
from trainer.data import encode_row, tokenize_lines

VISION = MODEL_CACHE / "hone-tiny-vision"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = build(VISION)
    tok = AutoTokenizer.from_pretrained(path)
    tok.hone_vision = VisionInputs(path)  # as trainer.modeling.load_base hangs it
    return tok


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _line(*urls: str, answer: str = "red circle", role: str = "user") -> dict:
    parts = [{"type": "text", "text": "What is drawn?"}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls
    ]
    return {"messages": [{"role": role, "content": parts}, {"role": "assistant", "content": answer}]}


PICTURE = Image.new("RGB", (40, 30), (200, 30, 30))


@pytest.mark.parametrize(
    ("fmt", "mime", "kwargs"),
    [
        ("PNG", "image/png", {}),
        ("JPEG", "image/jpeg", {}),
        ("WEBP", "image/webp", {}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("GIF", "image/gif", {}),
    ],
)
def test_every_format_is_told_by_its_bytes_and_sized_from_its_header(fmt, mime, kwargs):
    data = _bytes(PICTURE, fmt, **kwargs)
    info = image_checks.check_bytes(data, mime, image_checks.OPENAI_LIMITS)
    assert (info.mime, info.width, info.height, info.size) == (mime, 40, 30, len(data))
    assert image_checks.decode(data).size == (40, 30)


def test_the_validator_counts_images_and_names_each_bad_one():
    good = _url(_bytes(PICTURE, "PNG"), "image/png")
    gif = _bytes(PICTURE, "GIF")
    lines = [
        _line(good),
        _line(good, good),
        _line(_url(gif, "image/jpeg")),  # 3: declared one type, is another
        _line("data:image/png;base64,!!!!"),  # 4: not base64
        _line(_url(b"GIF89a" + b"\0" * 4, "image/gif")),  # 5: a header that is not an image
        _line("https://example.com/a.png"),  # 6: fetched from nowhere
        _line(*[good] * 11),  # 7: OpenAI's ten per example
        _line(good, role="system"),  # 8: images go in user turns
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": good, "detail": "high"}}]},
                {"role": "assistant", "content": "x"},
            ]
        },
        _line(_url(b"BM" + b"\0" * 40, "image/bmp")),  # 10: not a format Hone takes
    ]
    report = validate_bytes("\n".join(json.dumps(x) for x in lines).encode())
    assert (report.examples, report.images, report.image_examples) == (2, 3, 2)
    assert report.media()["first_image"] == {"line": 1, "field": "messages[0].content[1].image_url.url"}
    assert report.image_bytes == 3 * len(good)
    found = {(e.line, e.code) for e in report.errors}
    assert found >= {
        (3, "invalid_image_format"),
        (4, "invalid_image"),
        (5, "invalid_image"),
        (6, "unsupported_image_source"),
        (7, "too_many_images"),
        (8, "invalid_content_part"),
        (9, "unsupported_value"),
        (10, "invalid_image_format"),
    }, report.errors
    assert next(e for e in report.errors if e.line == 7).field == "messages[0].content[11].image_url.url"


def test_gemini_lines_take_inline_images_in_url_safe_base64_too():
    data = _bytes(PICTURE, "PNG")
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    line = {
        "contents": [
            {"role": "user", "parts": [{"text": "What?"}, {"inlineData": {"mimeType": "image/png", "data": urlsafe}}]},
            {"role": "model", "parts": [{"text": "red"}]},
        ]
    }
    file_line = {
        **line,
        "contents": [
            {"role": "user", "parts": [{"fileData": {"mimeType": "image/png", "fileUri": "gs://b/a.png"}}]},
            line["contents"][1],
        ],
    }
    web_line = json.loads(json.dumps(file_line).replace("gs://b/a.png", "https://example.com/a.png"))
    report = validate_bytes("\n".join(json.dumps(x) for x in (line, file_line, web_line)).encode())
    assert (report.examples, report.images) == (2, 2)
    # a gs:// object is the server's to read (under the project's grants): offline it is recorded, not checked
    assert report.image_refs == {"gs://b/a.png": (2, "contents[0].parts[0].fileData.fileUri")}
    assert [(e.line, e.field, e.code) for e in report.errors] == [
        (3, "contents[0].parts[0].fileData.fileUri", "unsupported_image_source")
    ]


def test_each_image_becomes_its_run_of_tokens_never_trained_on(tokenizer):
    first, second = (shapes.data_url(img) for img, _ in shapes.examples(2, 1))
    example = encode_row(tokenizer, _line(first, second, answer="blue square"), "openai_chat")
    image_id = tokenizer.hone_vision.image_token_id
    assert example.input_ids.count(image_id) == 2 * IMAGE_TOKENS
    assert example.images == [first, second]
    (a, n), (b, m) = example.image_spans
    assert (n, m) == (IMAGE_TOKENS, IMAGE_TOKENS) and b == a + IMAGE_TOKENS  # adjacent parts, adjacent runs
    assert set(example.input_ids[a : b + m]) == {image_id}
    assert not any(example.loss_mask[a : b + m])
    trained = tokenizer.decode([t for t, keep in zip(example.input_ids, example.loss_mask) if keep])
    assert trained == "blue square<|im_end|>\n"  # the answer as the template writes it, as for text


def test_truncation_keeps_an_image_run_whole_or_drops_it(tokenizer):
    first, second = (shapes.data_url(img) for img, _ in shapes.examples(2, 1))
    row = _line(first, second)
    whole = encode_row(tokenizer, row, "openai_chat")
    (_, _), (second_at, count) = whole.image_spans
    cut = tokenize_lines(tokenizer, [json.dumps(row).encode()], "openai_chat", second_at + count // 2)
    # the cut fell inside the second image's run: it ends before that run, with the first image only, and (no answer
    # left to learn) the example is dropped as any truncated-away example is
    assert cut.truncated == 1 and cut.dropped == 1 and cut.examples == []
    from trainer.data import _truncate

    kept, truncated = _truncate(whole, second_at + count // 2)
    assert truncated and kept.images == [first] and len(kept.input_ids) == second_at


def test_packed_and_padded_image_batches_train_alike_and_a_resumed_run_repeats_the_rest(tmp_path, tokenizer):
    rows = [shapes.chat_line(image, answer) for image, answer in shapes.examples(24, 3)]
    _, packed = run_training(tmp_path / "packed", rows, "openai_chat", model="hone-tiny-vision", epochs=2, lr=1e-3)
    _, padded = run_training(
        tmp_path / "padded", rows, "openai_chat", model="hone-tiny-vision", epochs=2, lr=1e-3, packing=False
    )
    assert packed.losses() == pytest.approx(padded.losses(), rel=1e-3)
    assert packed.losses()[-1] < packed.losses()[0]
    # Storage as a crash after epoch 1's checkpoint left it: the run picks up there and trains epoch 2 again, exactly.
    jobs = tmp_path / "packed/blobs/jobs/ftjob-core"
    shutil.rmtree(jobs / "adapter")
    last = max(jobs.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(last)
    again, resumed = run_training(tmp_path / "packed", rows, "openai_chat", model="hone-tiny-vision", epochs=2, lr=1e-3)
    assert resumed.losses() == pytest.approx(packed.losses()[-len(resumed.losses()) :], rel=1e-5)
    assert len(resumed.losses()) == len(packed.losses()) // 2
    adapter = json.loads((jobs / "adapter/adapter_config.json").read_text())
    assert "vision_tower" in adapter["exclude_modules"]  # the language model only, by default
    parity = json.loads((jobs / "adapter/parity_samples.json").read_text())
    assert parity["greedy"]["reason"] == "images" and parity["greedy"]["answers"]
    assert (jobs / "adapter/processor_config.json").exists()  # a full-weights folder serves on its own


def test_the_engine_and_the_trainer_make_the_same_pixels_and_ids(tokenizer):
    """One code path (hone_kernel.vision) on both sides: the engine's prompt for an image equals training's."""
    from inference.engine import Engine
    from inference.handlers import OpenAIHandlers
    from inference.models import ServingModels
    from trainer.modeling import pixels_of

    image, _ = shapes.examples(1, 5)[0]
    url = shapes.data_url(image)
    engine = Engine(str(VISION), "base")
    try:
        handlers = OpenAIHandlers(ServingModels(engine, "base", str(VISION)))
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is drawn?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]
        text = handlers.render_chat(
            handlers.models.profile(None),
            messages,
            add_generation_prompt=True,
            continue_final_message=False,
            tools=None,
            template_kwargs=None,
        )
        ids, pixels = handlers.chat_prompt(text, False, messages)
        trained = encode_row(tokenizer, {"messages": messages + [{"role": "assistant", "content": "x"}]}, "openai_chat")
        assert trained.input_ids[: len(ids)] == ids
        assert pixels.equal(pixels_of(tokenizer)([url]))
    finally:
        engine.stop()


def test_a_text_model_engine_refuses_images_and_a_vision_one_counts_them():
    from hone_kernel.tiny_model import build as build_text
    from inference.engine import Engine
    from inference.models import ServingModels
    from inference.server import create_app

    url = shapes.data_url(shapes.examples(1, 5)[0][0])
    part = {"type": "image_url", "image_url": {"url": url}}
    text_model = str(build_text(MODEL_CACHE / "hone-tiny"))
    for path, limit in ((text_model, 10), (str(VISION), 2)):
        engine = Engine(path, "base", images_per_prompt=limit)
        try:
            client = TestClient(create_app(ServingModels(engine, "base", path), api_key=None, allow_runtime_lora=False))
            three = [{"role": "user", "content": [part] * 3}]
            reply = client.post("/v1/chat/completions", json={"model": "base", "messages": three, "max_tokens": 2})
            assert reply.status_code == 400
            error = reply.json()["error"]
            if path == text_model:
                assert "reads text only" in error["message"] and error["param"] == "messages[0].content[0].image_url"
            else:
                assert error["message"] == "At most 2 image(s) may be provided in one prompt."
                counted = client.post(
                    "/tokenize", json={"model": "base", "messages": [{"role": "user", "content": [part] * 2}]}
                )
                assert counted.json()["count"] == 2 * IMAGE_TOKENS + len(
                    client.post(
                        "/tokenize", json={"model": "base", "messages": [{"role": "user", "content": ""}]}
                    ).json()["tokens"]
                )
        finally:
            engine.stop()


def test_the_plan_counts_an_image_as_its_tokens_not_its_bytes():
    from types import SimpleNamespace

    from service.base_models import TINY_VISION_DEFAULTS
    from service.training_plan import DatasetShape

    rows = [shapes.chat_line(image, answer) for image, answer in shapes.examples(20, 2)]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    report = validate_bytes(data)
    file = SimpleNamespace(example_count=report.examples, bytes=len(data), dataset_media=report.media())
    shape = DatasetShape.of(file, TINY_VISION_DEFAULTS)
    text_only = len(data) - report.image_bytes
    assert shape.mean_tokens == pytest.approx(text_only / 20 / TINY_VISION_DEFAULTS.bytes_per_token + IMAGE_TOKENS)
    assert shape.mean_tokens < 80  # the data URLs alone would read as thousands


def test_the_registry_says_which_models_read_images():
    registry = BaseModelRegistry({"big-vl": {"source": "/m", "vision": True, "lora_vision_tower": True}})
    assert registry.get("hone-tiny-vision").vision and not registry.get("hone-tiny").vision
    assert registry.get("big-vl").lora_vision_tower
    with pytest.raises(ValueError, match="lora_vision_tower needs vision"):
        BaseModelRegistry({"x": {"source": "/m", "lora_vision_tower": True}})
    with pytest.raises(ValueError, match="must be true or false"):
        BaseModelRegistry({"x": {"source": "/m", "vision": "yes"}})


def test_the_trainer_reads_referenced_images_from_the_copies_the_server_checked(tmp_path, tokenizer):
    """FileRef.images maps each reference to its copy; the lines come back with data URLs, Gemini's fileData as
    inlineData, and train as embedded images do."""
    from hone_kernel.trainer_contract import FileRef
    from trainer.blobs import FolderBlobs
    from trainer.data import lines_of

    image = shapes.examples(1, 4)[0][0]
    png = shapes.png(image)
    (tmp_path / "file-images/f").mkdir(parents=True)
    (tmp_path / "file-images/f/0").write_bytes(png)
    gemini = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "What?"}, {"fileData": {"mimeType": "image/png", "fileUri": "gs://b/x.png"}}],
            },
            {"role": "model", "parts": [{"text": "red"}]},
        ]
    }
    (tmp_path / "train").write_text(json.dumps(_line("file-abc")) + "\n\n" + json.dumps(gemini) + "\n")
    ref = FileRef("train", "openai_chat", images={"file-abc": "file-images/f/0", "gs://b/x.png": "file-images/f/0"})
    first, blank, second = (json.loads(x) if x.strip() else None for x in lines_of(FolderBlobs(tmp_path), ref))
    assert blank is None  # line numbers kept
    assert first["messages"][0]["content"][1]["image_url"]["url"] == shapes.data_url(image)
    assert second["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}
    }
    assert encode_row(tokenizer, first, "openai_chat").images == [shapes.data_url(image)]
    assert validate_bytes(json.dumps(_line("file-abc")).encode()).image_refs == {
        "file-abc": (1, "messages[0].content[1].image_url.url")
    }


def test_hone_files_validate_reports_images_and_what_it_could_not_check(tmp_path):
    from hone.cli.files import _check_locally, _report_json

    url = shapes.data_url(shapes.examples(1, 6)[0][0])
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(_line(u)) for u in [url] * 9 + ["file-abc123"]) + "\n")
    report, problems = _check_locally(path, 10)
    shown = _report_json(path, report, problems)
    assert (shown["ok"], shown["images"], shown["image_examples"], shown["unchecked_image_refs"]) == (True, 10, 10, 1)


class AppEngine:
    """inference.client.EngineClient's calls the parity gate makes, sent to an engine app in process."""

    def __init__(self, client: TestClient):
        self.client = client

    def tokenize_full(self, model: str, **request) -> dict:
        reply = self.client.post("/tokenize", json={"model": model, **request})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def chat(self, model: str, messages: list[dict], **params) -> dict:
        return self.client.post("/v1/chat/completions", json={**params, "model": model, "messages": messages}).json()


def test_full_weights_of_a_vision_model_serve_images_and_qlora_is_refused(tmp_path):
    """Full tuning trains the tower too and publishes a folder the engine serves on its own (processor included)."""
    from inference.engine import Engine
    from inference.models import ServingModels
    from inference.server import create_app

    rows = [shapes.chat_line(image, answer) for image, answer in shapes.examples(16, 3)]
    run_training(tmp_path, rows, "openai_chat", model="hone-tiny-vision", epochs=4, lr=1e-3, tuning_mode="full")
    folder = tmp_path / "blobs/jobs/ftjob-core/adapter"
    assert (folder / "model.safetensors").exists() and (folder / "processor_config.json").exists()
    engine = Engine(str(folder), "m")
    try:
        client = TestClient(create_app(ServingModels(engine, "m", str(folder)), api_key=None, allow_runtime_lora=False))
        body = {"model": "m", "messages": rows[0]["messages"][:1], "max_tokens": 2}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] > IMAGE_TOKENS
        # The parity gate against this engine: the pixels and answers agree; an engine whose processor normalises
        # otherwise (a different mean) is refused for its pixels.
        from service.deploy import parity

        recorded = json.loads((folder / "parity_samples.json").read_text())
        assert all(s["pixel_digest"] for s in recorded["samples"]) and recorded["greedy"]["reason"] == "images"
        parity.check(AppEngine(client), "m", folder, max_samples=4)  # type: ignore[arg-type]
        engine.vision.processor.image_processor.image_mean = [0.5, 0.5, 0.5]
        with pytest.raises(parity.ParityFailure, match="not the pixels training made"):
            parity.check(AppEngine(client), "m", folder, max_samples=4)  # type: ignore[arg-type]
    finally:
        engine.stop()

    from types import SimpleNamespace

    from service.errors import InvalidRequest
    from service.job_creation import _check_vision_mode

    ctx = SimpleNamespace(base_models=BaseModelRegistry({}))
    qlora = {"type": "supervised", "supervised": {"hyperparameters": {"tuning_mode": "qlora"}}}
    with pytest.raises(InvalidRequest) as refused:
        _check_vision_mode(ctx, SimpleNamespace(model="hone-tiny-vision"), qlora)
    assert refused.value.param == "method.supervised.hyperparameters.tuning_mode"
    _check_vision_mode(ctx, SimpleNamespace(model="hone-tiny"), qlora)  # a text model's QLoRA is its own business


def test_gemini_lines_train_their_inline_images(tokenizer):
    image = shapes.examples(1, 8)[0][0]
    line = shapes.gemini_line(image, "red circle")
    example = encode_row(tokenizer, line, "vertex_gemini")
    assert example.images == [shapes.data_url(image)] and len(example.image_spans) == 1
