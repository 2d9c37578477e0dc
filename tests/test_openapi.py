"""openapi/openapi.json is generated from the app and must not drift."""

import json

from service.openapi_gen import OUTPUT, render


def test_checked_in_openapi_is_current():
    assert OUTPUT.read_text() == render(), "openapi/openapi.json is stale: run `python -m service.openapi_gen`"


def test_openapi_covers_the_api():
    paths = json.loads(OUTPUT.read_text())["paths"]
    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{job_id}/cancel",
                 "/v1/fine_tuning/jobs/{job_id}/checkpoints", "/v1/models/{model_id}",
                 "/v1/organization/projects/{project_id}/service_accounts", "/healthz", "/readyz"):
        assert path in paths, path
