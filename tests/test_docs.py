"""The design docs stay true where a machine can check them (in-process, no servers).

- The Mermaid `stateDiagram-v2` blocks in docs/ draw exactly the transition tables of service/job_states.py and
  service/endpoint_states.py: every allowed edge, and no other (the `[*]` start and end markers are not edges).
- Every relative link in README.md and docs/*.md points to a file in the repository, and a `#heading` anchor to a
  heading that exists (GitHub's anchors).
- Nothing in README.md or docs/ points outside the repository (the design used to live in ../shared/DESIGN.md).
- Every HONE_* variable they name is a setting of service/settings.py, or one of a few listed client, process
  and deployment variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service import endpoint_states, eval_states, job_states, webhook_states

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
MERMAID = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EDGE = re.compile(r"^\s*(\[\*\]|[A-Za-z_][\w]*)\s*-->\s*(\[\*\]|[A-Za-z_][\w]*)\s*(?::.*)?$")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


# --- Mermaid state diagrams -------------------------------------------------------------------------------------


def state_diagrams(text: str) -> list[set[tuple[str, str]]]:
    """The edge sets of the stateDiagram-v2 blocks in a Markdown text, without the [*] markers."""
    diagrams = []
    for block in MERMAID.findall(text):
        lines = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("%%")]
        if not lines or lines[0].strip() != "stateDiagram-v2":
            continue
        edges = set()
        for line in lines[1:]:
            match = EDGE.match(line)
            assert match, f"a line of a state diagram that is no edge this test reads: {line.strip()!r}"
            source, target = match.groups()
            if "[*]" not in (source, target):
                edges.add((source, target))
        diagrams.append(edges)
    return diagrams


def table_edges(allowed: dict) -> set[tuple[str, str]]:
    return {(source.value, target.value) for source, targets in allowed.items() for target in targets}


def all_diagrams() -> list[tuple[Path, set[tuple[str, str]]]]:
    return [(page, edges) for page in PAGES for edges in state_diagrams(page.read_text(encoding="utf-8"))]


@pytest.mark.parametrize(
    "name, enum, allowed",
    [
        ("job", job_states.JobStatus, job_states.ALLOWED),
        ("endpoint", endpoint_states.EndpointState, endpoint_states.ALLOWED),
        ("eval run", eval_states.RunStatus, eval_states.ALLOWED),
        ("webhook delivery", webhook_states.DeliveryStatus, webhook_states.ALLOWED),
    ],
)
def test_state_diagram_matches_the_transition_table(name, enum, allowed):
    states = {s.value for s in enum}
    assert set(allowed) == set(enum), f"the {name} table has a row for every state"
    # The diagram of this machine: the one whose states are this enum's (each diagram draws one machine).
    found = [(page, edges) for page, edges in all_diagrams() if edges and {s for edge in edges for s in edge} <= states]
    assert found, f"no stateDiagram-v2 in README.md or docs/ draws the {name} states {sorted(states)}"
    expected = table_edges(allowed)
    for page, edges in found:
        where = page.relative_to(ROOT)
        assert edges - expected == set(), f"{where} draws {name} transitions the table does not allow"
        assert expected - edges == set(), f"{where} misses {name} transitions the table allows"


def test_every_state_diagram_draws_a_known_machine():
    machines = [
        {s.value for s in job_states.JobStatus},
        {s.value for s in endpoint_states.EndpointState},
        {s.value for s in eval_states.RunStatus},
        {s.value for s in webhook_states.DeliveryStatus},
    ]
    for page, edges in all_diagrams():
        drawn = {s for edge in edges for s in edge}
        assert any(drawn <= states for states in machines), (
            f"{page.relative_to(ROOT)} has a state diagram with unknown states: {sorted(drawn)}"
        )


def test_the_diagram_reader_sees_a_missing_or_extra_edge():
    text = "```mermaid\nstateDiagram-v2\n    [*] --> a : start\n    a --> b : go\n    b --> c\n    c --> [*]\n```\n"
    assert state_diagrams(text) == [{("a", "b"), ("b", "c")}]
    assert state_diagrams("```mermaid\nflowchart LR\n    a --> b\n```\n") == []
    with pytest.raises(AssertionError):
        state_diagrams("```mermaid\nstateDiagram-v2\n    a -> b\n```\n")


# --- links ------------------------------------------------------------------------------------------------------


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where link syntax is only an example."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    text = prose(page.read_text(encoding="utf-8"))
    return LINK.findall(text) + REFERENCE.findall(text)


def test_the_pages_exist():
    for name in ("README.md", "architecture.md", "state-machines.md", "trainer-contract.md"):
        assert (DOCS / name).is_file(), f"docs/{name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_into_the_repository(page):
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if path_part.startswith("/") or ROOT != resolved and ROOT not in resolved.parents:
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading '#{anchor}' in {resolved.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for outside in ("../shared", "/work/", "shared/DESIGN.md"):
        assert outside not in text, f"{page.relative_to(ROOT)} refers to {outside!r}, outside the repository"


def test_the_readme_points_to_the_design():
    targets = {target.partition("#")[0] for target in links(ROOT / "README.md")}
    assert {"docs/README.md", "docs/architecture.md"} <= targets


def test_the_slugs_are_githubs():
    assert (
        slug("Quickstart: the `hone` CLI, the Hone SDK or the `openai` SDK")
        == "quickstart-the-hone-cli-the-hone-sdk-or-the-openai-sdk"
    )
    assert slug("Fine-tuning jobs (`service/job_states.py`)") == "fine-tuning-jobs-servicejob_statespy"
    assert slug("The spec: `jobs/{id}/spec.json`") == "the-spec-jobsidspecjson"


# --- settings named in the docs ---------------------------------------------------------------------------------

# HONE_* names the docs use that are not control-plane settings, and the file that reads or sets each.
NOT_SETTINGS = {
    "HONE_API_KEY": "hone/client.py",  # the SDK and CLI
    "HONE_BASE_URL": "hone/client.py",
    "HONE_CHAT_HISTORY": "hone/cli/chat.py",  # `hone chat`'s history file
    "HONE_JOB_ID": "service/executors/local.py",  # a local trainer's environment
    "HONE_JOB_ATTEMPT": "service/executors/local.py",
    "HONE_REGISTRY": "deploy/docker/build.sh",  # where the images are pushed
    "HONE_BASE_MODEL": "deploy/compose.yaml",  # compose's vLLM service
    "HONE_BASE_MODEL_NAME": "deploy/compose.yaml",
}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_hone_variable_named_is_a_setting(page):
    from service.settings import FIELDS as SETTINGS_FIELDS

    settings = {f"HONE_{name.upper()}" for name in SETTINGS_FIELDS}
    named = set(re.findall(r"\bHONE_[A-Z0-9_]*[A-Z0-9]\b", page.read_text(encoding="utf-8")))
    unknown = sorted(named - settings - set(NOT_SETTINGS))
    assert not unknown, f"{page.relative_to(ROOT)} names HONE_* variables that are no setting: {unknown}"
    for name in sorted(named & set(NOT_SETTINGS)):
        assert name in (ROOT / NOT_SETTINGS[name]).read_text(encoding="utf-8"), f"{name} in {NOT_SETTINGS[name]}"


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CONTRIBUTING.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_merge_conflict_is_left_in_a_page(page):
    markers = [
        line
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "======="
    ]
    assert not markers, f"{page.relative_to(ROOT)} holds merge conflict markers: {markers}"
