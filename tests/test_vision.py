"""Vision fine-tuning end to end: hone-tiny-vision tuned through the API on images, served by the built-in engine
behind the gateway, and measured against its base on held-out images; what a text model and the engine refuse.

A real server (SQLite, local storage), the real trainer and engine processes, the `openai` and `google-genai` SDKs as
clients. The task (examples/shapes.py): name the colour and shape of a figure drawn on noise; the prompt is the same
for every image, so only the pixels tell the answer. Everything runs on "auto" hyperparameters."""

from __future__ import annotations

import base64
import io
import json

import google.oauth2.credentials
import openai
import pytest
from google import genai
from google.genai import types

from examples import shapes
from tests.support import HoneServer, jsonl, wait_endpoint, wait_evaluation, wait_job

HELD_OUT = 40  # held-out images asked through the gateway (of the 120 the split leaves out)
REFERENCED = 48  # training lines whose image is an uploaded file (purpose vision), named by its id


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    server = HoneServer(tmp_path_factory.mktemp("vision"), {"HONE_AUTO_DEPLOY": "true", "HONE_LOCAL_SLOTS": "1"})
    try:
        project = server.new_project("vision")
        client = project.openai()
        train, held_out = shapes.split(600, seed=7)
        lines = [shapes.chat_line(image, answer) for image, answer in train]
        for line, (image, _) in zip(lines[:REFERENCED], train):  # these name their image by an uploaded file's id
            uploaded = client.files.create(file=("figure.png", shapes.png(image)), purpose="vision")
            line["messages"][0]["content"][1]["image_url"]["url"] = uploaded.id
        train_file = client.files.create(file=("shapes.jsonl", jsonl(lines)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="hone-tiny-vision",
            training_file=train_file.id,
            seed=1,
            # measured against its base on images held out of training, after training (exact match)
            extra_body={"evaluation": {"max_rows": 16, "max_completion_tokens": 8}},
        )
        job = wait_job(client, job.id, lambda j: j.status in ("succeeded", "failed"), timeout=900)
        assert job.status == "succeeded", job.error
        with project.http() as http:
            endpoint = wait_endpoint(http, job.fine_tuned_model)
        assert endpoint["state"] == "ready", endpoint
        job = wait_evaluation(client, job)
        yield {
            "server": server,
            "project": project,
            "client": client,
            "job": job,
            "file": train_file,
            "endpoint": endpoint,
            "held_out": held_out[:HELD_OUT],
        }
    finally:
        server.stop()


def _answer(client: openai.OpenAI, model: str, image, *, stream: bool = False) -> str:
    messages = shapes.chat_line(image, None)["messages"]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=8)
        return (reply.choices[0].message.content or "").strip()
    chunks = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=8, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices).strip()


def test_the_tuned_model_names_held_out_images_and_its_base_cannot(tuned):
    client, model = tuned["client"], tuned["job"].fine_tuned_model
    rows = tuned["held_out"]
    tuned_right = sum(_answer(client, model, image) == answer for image, answer in rows) / len(rows)
    base_right = sum(_answer(client, "hone-tiny-vision", image) == answer for image, answer in rows) / len(rows)
    print(f"held-out accuracy through the gateway: base {base_right:.0%}, tuned {tuned_right:.0%}")
    assert tuned_right >= 0.90
    assert base_right <= 0.20


def test_the_job_shows_its_images_and_its_evaluation_compares_with_the_base(tuned):
    client, job = tuned["client"], tuned["job"]
    dataset = client.files.retrieve(tuned["file"].id).model_extra["dataset"]
    assert dataset["images"] == dataset["image_examples"] == dataset["examples"] == 480
    assert "image_bytes" not in dataset  # the stored estimate's input, not the summary's
    # the images named by file id were copied beside the file, and the trainer was told where
    spec = json.loads((tuned["server"].data_dir / "blobs" / "jobs" / job.id / "spec.json").read_text())
    assert len(spec["training_file"]["images"]) == REFERENCED
    evaluation = job.model_extra["evaluation"]
    assert evaluation["status"] == "completed" and evaluation["source"] == "holdout", evaluation
    tuned_run, base_run = evaluation["results"]["tuned"], evaluation["results"]["compare"]
    print(f"the job's evaluation: tuned {tuned_run['score']:.0%}, base {base_run['score']:.0%}")
    assert tuned_run["score"] >= 0.8 and base_run["score"] <= 0.2, evaluation


def test_streamed_answers_are_the_whole_ones(tuned):
    client, model = tuned["client"], tuned["job"].fine_tuned_model
    for image, _ in tuned["held_out"][:4]:
        assert _answer(client, model, image, stream=True) == _answer(client, model, image)


def test_vertex_generate_content_reads_inline_images(tuned):
    project, endpoint = tuned["project"], tuned["endpoint"]
    client = genai.Client(
        vertexai=True,
        project=project.project_id,
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token=project.api_key),
        http_options=types.HttpOptions(base_url=tuned["server"].base_url, api_version="v1"),
    )
    name = f"projects/{project.project_id}/locations/us-central1/endpoints/{endpoint['id']}"
    config = types.GenerateContentConfig(temperature=0, max_output_tokens=8)
    right = 0
    rows = tuned["held_out"][:8]
    for image, answer in rows:
        parts = [
            types.Part.from_text(text=shapes.PROMPT),
            types.Part.from_bytes(data=shapes.png(image), mime_type="image/png"),
        ]
        reply = client.models.generate_content(
            model=name, contents=[types.Content(role="user", parts=parts)], config=config
        )
        right += reply.text.strip() == answer
    assert right >= 0.8 * len(rows)


def test_requests_over_the_image_limits_are_400s(tuned):
    client, model = tuned["client"], tuned["job"].fine_tuned_model
    image, _ = tuned["held_out"][0]
    part = shapes.chat_line(image, None)["messages"][0]["content"][1]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [part] * 11}], max_tokens=4)
    assert "At most 10 image(s)" in caught.value.message
    broken = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [broken]}], max_tokens=4)
    assert "content[0].image_url.url" in caught.value.message


def test_a_text_model_given_image_data_is_refused_naming_line_and_field(tuned):
    client = tuned["client"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="hone-tiny", training_file=tuned["file"].id)
    error = caught.value.body
    assert error["code"] == "unsupported_media" and error["param"] == "training_file"
    assert "line 1, field messages[0].content[1].image_url.url" in error["message"]
    assert "hone-tiny-vision" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:  # images train with the supervised method only
        client.fine_tuning.jobs.create(
            model="hone-tiny-vision", training_file=tuned["file"].id, method={"type": "dpo", "dpo": {}}
        )
    assert caught.value.body["code"] in ("unsupported_media", "invalid_training_file")


def test_the_file_limits_name_the_line_and_part(tuned):
    client = tuned["client"]
    image, answer = tuned["held_out"][0]
    line = shapes.chat_line(image, answer)
    gif = io.BytesIO()
    image.save(gif, "GIF")
    bad = shapes.chat_line(image, answer)
    bad["messages"][0]["content"][1]["image_url"]["url"] = (
        "data:image/jpeg;base64," + base64.b64encode(gif.getvalue()).decode()
    )
    uploaded = client.files.create(file=("bad.jsonl", jsonl([line] * 10 + [bad])), purpose="fine-tune")
    assert uploaded.status == "error"
    assert "line 11, field messages[0].content[1].image_url.url" in uploaded.status_details
    assert "declared image/jpeg but its bytes are image/gif" in uploaded.status_details
