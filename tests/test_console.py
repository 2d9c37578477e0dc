"""The web console (/console) end to end, in headless Chromium driven by Playwright, against a real server.

Debian's chromium (scripts/setup.sh installs it) runs the pages; Playwright's own browser downloads are never
used. The server trains with the FAKE trainer and serves with the FAKE engine (tests/fake_trainer,
tests/fake_engine say what they fake and why): what is tested is the console, over the API as the server really
answers it. A tuned model answers "answer <digest of its adapter>" and the base "answer base", so the playground's
two panes are told apart by what they say.

Screenshots of each page (desktop and phone width) are written under the test's tmp folder and copied to
test-artifacts/console/ (git-ignored)."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from service.console import SECURITY_HEADERS, STATIC
from tests.support import (
    FAKE_ENGINE_PYTHON,
    HoneServer,
    chat_dataset,
    chat_line,
    fake_trainer_env,
    jsonl,
    wait_endpoint,
    wait_for,
    wait_job,
    wait_past_step,
)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "console"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
NOT_BASE = {
    "type": "string_check",
    "name": "not_base",
    "input": "{{ sample.output_text }}",
    "reference": "answer base",
    "operation": "ne",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {
        **fake_trainer_env(step_s=0.2),  # 30 steps: 6 s, long enough to pause it part way from the page
        "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON,
        "HONE_AUTO_DEPLOY": "true",
        "HONE_LOCAL_SLOTS": "1",
        "HONE_EVAL_POLL_S": "0.3",
    }
    srv = HoneServer(tmp_path_factory.mktemp("console"), env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), "Debian's chromium is missing: scripts/setup.sh installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Shots:
    """Screenshots into the test's tmp folder, copied to test-artifacts/console/ in the repository."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, ARTIFACTS / path.name)


@pytest.fixture
def shots(tmp_path):
    return Shots(tmp_path / "screenshots")


def open_console(browser, server: HoneServer, key: str, viewport=DESKTOP):
    """A new tab signed in with `key`, and the problems it reports (console errors, failed scripts, CSP)."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    problems: list[str] = []

    def on_console(message):
        # Chromium logs every answer >= 400 as an error; the tests look at those themselves (on_response)
        if message.type == "error" and not message.text.startswith("Failed to load resource: the server responded"):
            problems.append(message.text)

    def on_response(response):
        # the admin key is told apart by the 403 a project route answers it (js/api.js, whoIs)
        expected = response.status == 403 and response.url.endswith("/v1/models")
        if response.status >= 400 and not expected:
            problems.append(f"{response.status} {response.request.method} {response.url}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server.base_url + "/console")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()
    return page, problems


def wait_points(page: Page, chart: str, series: str, at_least: int) -> int:
    figure = page.locator(f"#{chart}")
    wait_for(lambda: int(figure.get_attribute(f"data-series-{series}") or 0) >= at_least, 20, 0.1, f"{chart} points")
    return int(figure.get_attribute(f"data-series-{series}") or 0)


def metric_steps(http: httpx.Client, job_id: str, key: str) -> set[int]:
    events = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return {e["data"]["step"] for e in events if e["type"] == "metrics" and key in e["data"]}


def test_console_shows_a_job_live_its_files_endpoints_and_answers_in_the_playground(server, browser, shots):
    project = server.new_project("console")
    client = project.openai()
    http = project.http()
    training = client.files.create(file=("train.jsonl", chat_dataset(40)), purpose="fine-tune")
    validation = client.files.create(file=("valid.jsonl", chat_dataset(12)), purpose="fine-tune")
    good = jsonl([chat_line()])
    broken = good + good + b'{"messages": "not a list"}\n' + good + b"{oops\n"  # lines 3 and 5 are bad
    bad = client.files.create(file=("broken.jsonl", broken), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training.id,
        validation_file=validation.id,
        seed=3,
        hyperparameters={"n_epochs": 3, "batch_size": 4},
        extra_body={"evaluation": {"testing_criteria": [NOT_BASE], "max_rows": 4}},
    )

    # A second job waits in the queue behind the first (one training slot), until the page pauses the first.
    second = client.fine_tuning.jobs.create(
        model="hone-tiny",
        training_file=training.id,
        seed=4,
        hyperparameters={"n_epochs": 3, "batch_size": 4},
        extra_body={"auto_deploy": False},
    )

    page, problems = open_console(browser, server, project.api_key)
    # Jobs: the jobs just created are listed, with their status, the second with its place in the queue.
    row = page.locator(f'tr[data-job-id="{job.id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text(re.compile("validating files|queued|running"))
    expect(page.locator('#nav a[aria-current="page"]')).to_have_text("Jobs")
    expect(page.locator(f'tr[data-job-id="{second.id}"] .queue')).to_have_text(
        re.compile(r"#[12] in queue"), timeout=10_000
    )
    shots.take(page, "jobs")

    # The job, live: pause it from the page half way, its chart holds the steps reported so far; resume it.
    row.get_by_role("link", name=job.id).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {job.id}")
    expect(page.get_by_role("heading", level=1)).to_be_focused()  # focus moves to the new page's heading
    wait_past_step(client, job.id, 2)
    page.get_by_role("button", name="Pause").click()  # shown once the page has seen the job queued or running
    expect(page.locator("#job-status")).to_have_text("paused", timeout=15_000)
    wait_job(client, job.id, lambda j: j.status == "paused", timeout=30)
    # (the trainer reports the step it was in as it stops: the job is paused before its last events arrive)
    wait_for(
        lambda: (
            int(page.locator("#chart-loss").get_attribute("data-series-train-loss") or 0)
            == len(metric_steps(http, job.id, "train_loss"))
        ),
        10,
        0.2,
        "the chart to show every step reported before the pause",
    )
    assert 3 <= len(metric_steps(http, job.id, "train_loss")) < 30
    shots.take(page, "job-paused")
    # Resumed, it queues behind the second job, which took the slot; cancelling that one from its page frees it.
    wait_job(client, second.id, lambda j: j.status == "running", timeout=30)  # the freed slot's
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#job-queue")).to_have_text("#1", timeout=10_000)
    page.goto(f"{server.base_url}/console/#/jobs/{second.id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert client.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
    page.go_back()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
    wait_points(page, "chart-loss", "train-loss", 30)
    assert int(page.locator("#chart-loss").get_attribute("data-series-train-loss")) == 30  # 40 rows / 4 x 3 epochs
    validated = metric_steps(http, job.id, "valid_loss")
    assert validated, "the fake trainer reports validation loss"
    wait_for(
        lambda: int(page.locator("#chart-loss").get_attribute("data-series-valid-loss") or 0) == len(validated),
        10,
        0.1,
        "validation points",
    )
    assert int(page.locator("#chart-accuracy").get_attribute("data-series-train-mean-token-accuracy")) == 30
    # uPlot drew it: the values it holds are the 30 training and the validation points
    expect(page.locator("#chart-loss canvas")).to_have_count(1)
    expect(page.locator("#chart-loss")).to_have_attribute("data-drawn", str(30 + len(validated)))
    # The evaluation against the base, side by side, once both have answered.
    evaluation = page.locator("#evaluation")
    expect(evaluation.locator("tbody tr")).to_have_count(2, timeout=60_000)
    expect(evaluation.locator("tbody tr").first).to_contain_text("100.0%")
    expect(evaluation.locator("tbody tr").nth(1)).to_contain_text("0.0%")
    expect(page.locator("#hyperparameters")).to_contain_text("n epochs")
    expect(page.locator("#checkpoints tbody tr").first).to_be_visible()
    expect(page.locator("#events li").first).to_be_visible()
    page.get_by_text("Trainer log (the latest attempt)").click()
    expect(page.locator("#trainer-log")).to_contain_text(f"starting {job.id} attempt 2")  # resumed: its 2nd
    page.locator("#chart-loss summary").click()  # the chart's numbers, as a table for screen readers
    expect(page.locator("#chart-loss table.chart-data tbody tr")).to_have_count(30)
    shots.take(page, "job")

    # Files: the validation report of a broken file names its bad lines.
    page.get_by_role("link", name="Files", exact=True).click()
    page.locator(f'tr[data-file-id="{bad.id}"]').get_by_role("link").click()
    report = page.locator("#validation-report")
    expect(report.locator("tbody tr")).to_have_count(2)
    assert report.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.line)") == ["3", "5"]
    shots.take(page, "file-report")

    # Models: deploy the base from the page (the evaluation retired the endpoint it deployed for itself).
    tuned = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    wait_endpoint(http, tuned)
    page.get_by_role("link", name="Models").click()
    page.get_by_role("button", name="Deploy hone-tiny", exact=True).click()
    assert wait_endpoint(http, "hone-tiny")["state"] == "ready"
    page.get_by_role("link", name="Endpoints").click()
    expect(page.locator('tr[data-state="ready"]')).to_have_count(2, timeout=15_000)
    shots.take(page, "endpoints")

    # Playground, from the job: one prompt, both answers streamed side by side.
    page.goto(f"{server.base_url}/console/#/jobs/{job.id}")
    page.get_by_role("link", name="Try in the playground").click()
    expect(page.locator("#pg-base")).to_have_value("hone-tiny")
    expect(page.locator("#pg-model")).to_have_value(tuned)
    page.get_by_label("Prompt").fill("What is 2+2?")
    page.get_by_role("button", name="Send to both").click()
    expect(page.locator("#pane-tuned")).to_have_attribute("data-state", "done", timeout=20_000)
    expect(page.locator("#pane-base")).to_have_attribute("data-state", "done", timeout=20_000)
    tuned_answer = page.locator("#pane-tuned-answer").inner_text()
    assert re.fullmatch(r"answer [0-9a-f]{8}", tuned_answer.strip()), tuned_answer
    assert page.locator("#pane-base-answer").inner_text().strip() == "answer base"
    shots.take(page, "playground")
    usage = http.get("/v1/endpoints", params={"model": tuned}).json()["data"][0]["usage"]
    assert usage["requests"] >= 1

    # Every form control has a name a screen reader can say, and the skip link comes first.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(el => !el.labels?.length && !el.getAttribute('aria-label')).map(el => el.outerHTML)"""
    )
    assert unlabelled == []
    # The keyboard: the skip link shows when focused and moves focus to the content; links open pages with Enter.
    page.locator("#skip").focus()
    assert page.locator("#skip").bounding_box()["y"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # a refresh of the page (every 5 s on Endpoints) keeps the focus where it was
    page.get_by_role("link", name="Endpoints").click()
    stop = page.get_by_role("button", name=f"Stop the endpoint of {tuned}")
    stop.focus()
    page.evaluate("document.querySelector('#endpoints-results table').dataset.before = 'refresh'")
    expect(page.locator("#endpoints-results table[data-before]")).to_have_count(0, timeout=10_000)  # rebuilt
    expect(stop).to_be_focused()
    page.get_by_role("link", name="Files", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Files")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    assert problems == []
    page.context.close()

    # A phone: the same pages fit its width, the menu folds behind a button.
    phone, problems = open_console(browser, server, project.api_key, PHONE)
    expect(phone.locator(f'tr[data-job-id="{job.id}"]')).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shots.take(phone, "phone-jobs")
    phone.get_by_role("button", name="Menu").click()
    phone.get_by_role("link", name="Playground").click()
    expect(phone.get_by_role("heading", level=1)).to_have_text("Playground")
    phone.goto(f"{server.base_url}/console/#/jobs/{job.id}")
    expect(phone.locator("#chart-loss")).to_have_attribute("data-series-train-loss", "30")
    expect(phone.locator("#chart-loss")).to_have_attribute("data-drawn", str(30 + len(validated)))
    assert phone.locator("#chart-loss canvas").bounding_box()["width"] <= PHONE["width"]
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shots.take(phone, "phone-job")
    assert problems == []
    phone.context.close()


def test_the_admin_key_sees_projects_and_makes_keys(server, browser, shots):
    server.new_project("console admin")
    page, problems = open_console(browser, server, server.admin_key)
    expect(page.get_by_role("heading", level=1)).to_have_text("Projects")
    expect(page.locator("#nav a")).to_have_text(["Projects"])  # a project's pages are not the admin key's
    page.get_by_role("link", name="console admin").first.click()
    page.get_by_label("Service account name").fill("from the console")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_label("API key of from the console").input_value()
    assert key.startswith("sk-")
    expect(page.locator("#accounts-results")).to_contain_text("from the console")
    shots.take(page, "admin-project")
    # the new key works, and signs in as a project
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Fine-tuning jobs")
    assert problems == []
    # A wrong key is refused on the page, and nothing is kept.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key", exact=True).fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That key is not valid for this server.")
    assert page.evaluate("sessionStorage.length") == 0
    page.context.close()


def test_console_is_static_same_origin_and_ships_in_the_wheel(server):
    with httpx.Client(base_url=server.base_url) as http:
        moved = http.get("/console")
        assert (moved.status_code, moved.headers["location"]) == (308, "/console/")
        index = http.get("/console/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        for name, value in SECURITY_HEADERS.items():
            assert index.headers[name] == value
        # no CDN: every script and stylesheet the page loads is its own
        assets = re.findall(r'(?:src|href)="([^"]+)"', index.text)
        assert assets and all(not re.match(r"[a-z]+:|//", a) for a in assets), assets
        for asset in assets:
            assert http.get(f"/console/{asset}").status_code == 200, asset
        assert http.get("/console/../service/app.py").status_code == 404
        assert "/console" not in json.dumps(http.get("/openapi.json").json()["paths"])
    # The vendored uPlot is the version its README says.
    banner = (STATIC / "vendor" / "uplot" / "uPlot.iife.min.js").read_text()[:80]
    version = re.search(r"uPlot \(v([\d.]+)\)", banner)
    assert version and f"# uPlot {version.group(1)}, vendored" in (STATIC / "vendor/uplot/README.md").read_text()
    # pyproject's package data names every file of the console, so a wheel install has them.
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    packaged = {path for pattern in patterns for path in (REPO / "service").glob(pattern) if path.is_file()}
    missing = [str(f.relative_to(REPO)) for f in STATIC.rglob("*") if f.is_file() and f not in packaged]
    assert not missing, f"not in pyproject.toml's package data: {missing}"
