"""The job state machine table."""

import pytest

from service.errors import InvalidRequest
from service.job_states import ALLOWED, TERMINAL, JobStatus, can_transition, check_transition


def test_every_status_has_a_row_and_terminal_states_are_final():
    assert set(ALLOWED) == set(JobStatus)
    for status in TERMINAL:
        assert ALLOWED[status] == frozenset()


@pytest.mark.parametrize(
    "current, target, ok",
    [
        ("validating_files", "queued", True),
        ("validating_files", "failed", True),
        ("validating_files", "running", False),
        ("queued", "running", True),
        ("queued", "paused", True),
        ("running", "paused", True),
        ("paused", "queued", True),
        ("paused", "running", False),
        ("running", "succeeded", True),
        ("succeeded", "cancelled", False),
        ("cancelled", "queued", False),
    ],
)
def test_transitions(current, target, ok):
    assert can_transition(JobStatus(current), JobStatus(target)) is ok


def test_illegal_transition_names_the_status():
    with pytest.raises(InvalidRequest) as err:
        check_transition("ftjob-x", JobStatus.SUCCEEDED, JobStatus.CANCELLED)
    assert err.value.status_code == 400 and "'succeeded'" in err.value.message
