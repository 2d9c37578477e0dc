"""openapi/openapi.json is generated from the app and must not drift."""

import json

from service.openapi_gen import OUTPUT, render


def test_checked_in_openapi_is_current():
    assert OUTPUT.read_text() == render(), "openapi/openapi.json is stale: run `python -m service.openapi_gen`"


def test_openapi_covers_the_api():
    paths = json.loads(OUTPUT.read_text())["paths"]
    for path in (
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
        "/v1/models/{model_id}",
        "/v1/organization/projects/{project_id}/service_accounts",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path


def test_openapi_is_a_contract():
    """Every operation declares its success body, its errors in an envelope (never FastAPI's 422) and its auth."""
    document = json.loads(OUTPUT.read_text())
    assert {"/v1/chat/completions", "/v1/completions"} <= set(document["paths"])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert responses["200"].get("content"), (method, path)
            if path not in ("/healthz", "/readyz"):
                assert operation.get("security"), (method, path)
                envelope = "GoogleErrorEnvelope" if path.startswith("/{api_version}/") else "ErrorEnvelope"
                assert "401" in responses, (method, path)
                for status in (s for s in responses if s[0] in "45"):
                    schema = responses[status]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{envelope}"}, (method, path, status)
    vertex = document["paths"]["/{api_version}/projects/{project}/locations/{location}/tuningJobs"]["get"]
    assert vertex["security"] == [{"VertexBearer": []}, {"GoogleApiKey": []}]
