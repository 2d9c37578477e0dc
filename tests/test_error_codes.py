"""Error codes are one enum (service.errors.ErrorCode) shared by the OpenAI and Vertex surfaces: no module of the
control plane spells a code as a string of its own, and every code renders the same in both envelopes."""

from __future__ import annotations

import re
from pathlib import Path

from service.api.error_envelope import google_error
from service.errors import ErrorCode

REPO = Path(__file__).resolve().parent.parent
LITERAL_CODE = re.compile(r'\bcode\s*=\s*"[a-z_]+"|"code":\s*"[a-z_]+"|DeployError\("[a-z_]+"')


def test_no_error_code_is_spelled_outside_the_enum():
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in (REPO / "service").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if LITERAL_CODE.search(line)
    ]
    assert offenders == []


def test_codes_are_snake_case_and_render_alike_in_both_envelopes():
    for code in ErrorCode:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code.value) and code.name == code.value.upper()
        body = google_error(400, "m", code=code, param="p")["error"]
        assert body["details"][-1]["reason"] == code.value.upper()
    assert google_error(400, "m", code=ErrorCode.INVALID_JOB_STATUS)["error"]["status"] == "FAILED_PRECONDITION"
