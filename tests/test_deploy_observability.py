"""deploy/prometheus and deploy/grafana: the scrape config, alert rules and dashboard are valid, the alerts do
what they say (promtool's rule unit tests, which must also catch weakened rules), every metric they name is one
that Hone's real exporters expose, and a real Prometheus (Debian's package) runs the shipped config against a
real control plane and an engine found through HTTP service discovery (the FAKE engine of tests/fake_engine,
which serves the built-in engine's own metrics module; the built-in engine's exposition is read in process) and a
stand-in for NVIDIA's dcgm-exporter (no GPU here: a static exposition in its format, with its metric names). Every
alert has a runbook in docs/runbooks.md, and the dashboard's failure, project, engine-memory and GPU panels read
what they should."""

from __future__ import annotations

import copy
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.support import FAKE_ENGINE_PYTHON, REPO, HoneServer, free_port, wait_endpoint, wait_http
from tests.test_docs import anchors

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "hone.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"

METRICS_TOKEN = "hone-metrics-test-token"  # the control plane's HONE_METRICS_TOKEN, and the shipped config's file

# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}

# What NVIDIA's dcgm-exporter answers on a host with one GPU, in its format (its default counters, the fields
# the dashboard reads; labels as it sets them outside Kubernetes). No GPU runs here: the test's stand-in serves it.
DCGM_EXPOSITION = "".join(
    f"# HELP {name} {text}\n# TYPE {name} gauge\n"
    f'{name}{{gpu="0",UUID="GPU-5d3f7e2a-0000-0000-0000-000000000000",device="nvidia0",'
    f'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-host",DCGM_FI_DRIVER_VERSION="550.54.15"}} {value}\n'
    for name, text, value in [
        ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", 87),
        ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", 10240),
        ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", 71000),
        ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", 512.5),
    ]
)
DCGM_NAMES = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"}
# Control-plane metrics whose series name a project (project_id): the dashboard filters them by $project.
PROJECT_LABELLED = {
    "hone_job_failures_total",
    "hone_endpoint_up",
    "hone_job_step",
    "hone_job_total_steps",
    "hone_job_train_loss",
    "hone_job_valid_loss",
    "hone_job_tokens_per_second",
    "hone_job_step_seconds",
    "hone_job_mfu",
    "hone_job_last_step_timestamp_seconds",
    "hone_job_trained_tokens",
    "hone_job_estimated_finish_timestamp_seconds",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/setup.sh installs Debian's prometheus package (as root)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(panels: list[dict] | None = None):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard()["panels"] if panels is None else panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


# ---- PromQL: the metric names an expression reads ------------------------------------------------------------

PROMQL_FUNCTIONS = {
    # aggregation operators
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    # functions
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "rad",
    "pi",
    # @ modifier helpers
    "start",
    "end",
}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+(?::\w+)?\}?")
_NUMBER = re.compile(r"(?<![\w:])\d[\w.]*")
_IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left once strings, label matchers, ranges, grouping label
    lists, Grafana variables, numbers and durations, keywords and function calls are taken out. An unknown
    function is an error, so that a typo cannot hide as a function call."""
    names = set(_NAME_MATCHER.findall(expr))  # {__name__="x"} names x; regex matchers on __name__ name none
    text = _STRING.sub('""', expr)
    text = re.sub(r"#[^\n]*", " ", text)  # comments
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges, subqueries
    text = _GROUPING.sub(" ", text)  # by (le), on (job), group_left (label) ...
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _NUMBER.sub(" ", text)  # 0.95, 1e-9, 5m, 0x1f
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            if word not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {word!r} in {expr!r}")
        elif word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def variable_query_exprs(variable: dict) -> list[str]:
    """The PromQL inside a Grafana query variable (label_values(metric, label), query_result(expr), ...)."""
    query = variable.get("query")
    query = (query.get("query") if isinstance(query, dict) else query) or ""
    query = query.strip()
    if m := re.fullmatch(r"label_values\((.+),\s*\w+\s*\)", query, re.S):
        return [m.group(1)]
    if re.fullmatch(r"(label_values|label_names)\(\s*\w*\s*\)", query):
        return []
    if m := re.fullmatch(r"query_result\((.+)\)", query, re.S):
        return [m.group(1)]
    return [query] if query else []


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    exprs = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            exprs += [(f"variable {variable['name']}", e) for e in variable_query_exprs(variable)]
    return exprs


def alert_exprs() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def as_promql(expr: str) -> str:
    """A dashboard expression as plain PromQL: Grafana's variables replaced by values Prometheus accepts."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", lambda m: {"range": "1h"}.get(m.group(1), "1m"), expr)
    return _GRAFANA_VARIABLE.sub(".*", expr)


# ---- exported metric names -----------------------------------------------------------------------------------


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can carry: each family from its # TYPE line, expanded
    (counter -> _total, histogram -> _bucket/_sum/_count, summary -> _sum/_count), plus the sample names."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            kind = kind.strip()
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind in ("histogram", "gaugehistogram"):
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            elif kind == "summary":
                names |= {name, name + "_sum", name + "_count"}
            else:
                names.add(name)
        elif line.strip() and not line.startswith("#"):
            names.add(re.match(r"[^{\s]+", line).group(0))
    return names


def engine_exposition() -> str:
    from inference.metrics import EngineMetrics

    return EngineMetrics("hone-tiny", enable_lora=True, max_loras=4).render().decode()


def engine_names() -> set[str]:
    return exported_names(engine_exposition())


# ---- vLLM's own metric names (shared/reference/vllm-lora.md §1.11) ----------------------------------------------

# A verbatim copy of the metrics section of the team's vLLM reference (shared/reference/vllm-lora.md, outside
# this repository), so a fresh clone tests on its own; refresh it when the reference changes.
VLLM_METRICS_COPY = REPO / "tests" / "vllm-metrics-reference.md"
METRIC_TYPES = ("counter", "gauge", "histogram")
_TABLE_CELL = re.compile(r"(?<!\\)\|")  # cells split on '|', but not on an escaped '\|' inside a cell
_CODE = re.compile(r"`([^`]+)`")
_VLLM_NAME = re.compile(r"vllm:[A-Za-z_:][A-Za-z0-9_:]*")


def metrics_section(markdown: str) -> str:
    """The "Prometheus metrics" section: from its heading to the next heading or rule."""
    match = re.search(r"^#{2,4} [\d.]* *Prometheus metrics.*?(?=^#{1,4} |^---\s*$|\Z)", markdown, re.M | re.S)
    assert match, "no 'Prometheus metrics' section"
    return match.group(0).strip()


def reference_families(section: str) -> dict[str, str]:
    """vLLM metric family -> type, from the section's table: the names in backticks in the first column (a label
    selector after a name is dropped), the type's leading word in the second ("gauge(info)" is a gauge). Names in
    the notes column -- deprecated and removed ones -- are not families."""
    families = {}
    for line in section.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = [cell.strip() for cell in _TABLE_CELL.split(line.strip())[1:-1]]
        kind = re.match(r"[a-z]+", cells[1]) if len(cells) > 1 else None
        if not kind or kind.group(0) not in METRIC_TYPES:  # the header, the |---| row, other exporters' rows
            continue
        for code in _CODE.findall(cells[0]):
            if name := _VLLM_NAME.match(code):
                families[name.group(0)] = kind.group(0)
    return families


def series_names(families: dict[str, str]) -> set[str]:
    """The series names a family's samples carry (counters are listed with `_total` already)."""
    names = set()
    for name, kind in families.items():
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def vllm_families() -> dict[str, str]:
    return reference_families(metrics_section(VLLM_METRICS_COPY.read_text()))


@pytest.fixture(scope="module")
def hone(tmp_path_factory):
    # The engine Prometheus scrapes is the FAKE engine (tests/fake_engine): the same server and metrics module as
    # the built-in engine, without loading a model; the engine's own exposition is checked below in process.
    server = HoneServer(
        tmp_path_factory.mktemp("observability"),
        {"HONE_METRICS_TOKEN": METRICS_TOKEN, "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON},
    )
    yield server
    server.stop()


def control_plane_names(server: HoneServer) -> set[str]:
    assert httpx.get(server.base_url + "/metrics", timeout=30).status_code == 401  # HONE_METRICS_TOKEN is set
    reply = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    assert reply.status_code == 200, reply.text[:500]
    return exported_names(reply.text)


def unknown_names(exprs: list[tuple[str, str]], known: set[str]) -> dict[str, list[str]]:
    unknown: dict[str, list[str]] = {}
    for where, expr in exprs:
        for name in sorted(metric_names(expr) - known):
            unknown.setdefault(name, []).append(where)
    return unknown


# ---- the extractor checks itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, names",
    [
        (
            'sum by (le, model) (rate(hone_gateway_request_duration_seconds_bucket{model=~"$model"}[$__rate_interval]))',
            {"hone_gateway_request_duration_seconds_bucket"},
        ),
        (
            'histogram_quantile(0.95, sum(rate(vllm:e2e_request_latency_seconds_bucket{job="hone-engines"}[5m])) by (le))',
            {"vllm:e2e_request_latency_seconds_bucket"},
        ),
        (
            'sum(increase(a_total{to="failed"}[1h])) / (sum(increase(a_total{to=~"succeeded|failed"}[1h])) > 0) > 0.25 '
            "and sum(b_total offset 5m) >= 3",
            {"a_total", "b_total"},
        ),
        ("time() - max by (job_id) (x_seconds > 0) > 900", {"x_seconds"}),
        ('x / on (instance) group_left (version) y{version!="by"} unless z @ start()', {"x", "y", "z"}),
        ("clamp_min(sum(rate(c_total[$__rate_interval])), 1e-9) or vector(0) + Inf", {"c_total"}),
        ("topk by (instance) (1, vllm:lora_requests_info) * on() group_right w", {"vllm:lora_requests_info", "w"}),
        ('{__name__="named_by_matcher", le="0.5"} + max_over_time(m[5m:1m])', {"named_by_matcher", "m"}),
        ('label_replace(up{job="hone"}, "by", "$1", "instance", "(.*):.*")', {"up"}),
    ],
)
def test_metric_name_extractor(expr, names):
    assert metric_names(expr) == names


def test_extractor_catches_a_name_hone_does_not_export():
    known = engine_names() | {"hone_gateway_requests_total"}
    exprs = [
        ("good", 'sum(rate(hone_gateway_requests_total{status=~"5.."}[5m]))'),
        ("bad", 'sum by (le) (rate(hone_nonexistent_total{route="/v1/models"}[5m])) / on() vllm:typo_total'),
    ]
    assert unknown_names(exprs, known) == {"hone_nonexistent_total": ["bad"], "vllm:typo_total": ["bad"]}
    with pytest.raises(ValueError, match="histogram_quantil"):
        metric_names("histogram_quantil(0.9, x_bucket)")  # a misspelt function is not taken for a metric


def test_exported_names_expands_families():
    exposition = (
        "# HELP a_total A.\n# TYPE a_total counter\n"  # classic format: counter named with _total
        "# TYPE b counter\n"  # OpenMetrics style
        "# TYPE h histogram\n# TYPE g gauge\ng 1\n# TYPE s summary\n"
        'vllm:x_total{model_name="m"} 3\n'
    )
    assert exported_names(exposition) == {
        "a_total",
        "b_total",
        "h_bucket",
        "h_sum",
        "h_count",
        "g",
        "s",
        "s_sum",
        "s_count",
        "vllm:x_total",
    }


def test_grafana_variables_become_promql():
    assert (
        as_promql('rate(x{model=~"$model", m=~"${base_model}"}[$__rate_interval]) + y[$__range]')
        == 'rate(x{model=~".*", m=~".*"}[1m]) + y[1h]'
    )
    assert variable_query_exprs({"query": {"query": 'label_values(hone_x_total{a="b"}, model)'}}) == [
        'hone_x_total{a="b"}'
    ]
    assert variable_query_exprs({"query": "label_values(model)"}) == []


# ---- promtool -------------------------------------------------------------------------------------------------


def test_prometheus_config_is_valid(tmp_path):
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"hone", "hone-engines", "dcgm"}
    assert jobs["hone"]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert jobs["dcgm"]["static_configs"][0]["targets"] == ["127.0.0.1:9400"]  # dcgm-exporter's default port
    [sd] = jobs["hone-engines"]["http_sd_configs"]
    assert urlparse(sd["url"]).path == "/v1/admin/prometheus/targets" and sd["refresh_interval"]
    assert sd["authorization"]["credentials_file"] == "hone_admin_api_key"
    assert jobs["hone"]["authorization"] == {"type": "Bearer", "credentials_file": "hone_metrics_token"}
    # The key and token files live beside the config and never in git.
    for name in ("hone_admin_api_key", "hone_metrics_token"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(PROMETHEUS_DIR / name)], cwd=REPO)
        assert ignored.returncode == 0, name

    # promtool checks the config with its rule file and credentials file in place, as a deployment has them.
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    (tmp_path / "hone_admin_api_key").write_text("sk-admin-dummy\n")
    (tmp_path / "hone_metrics_token").write_text("metrics-dummy\n")
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in checked.stdout
    assert "SUCCESS: 1 rule files found" in checked.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout

    # ... and it does check: a broken copy is refused.
    broken = copy.deepcopy(config)
    broken["scrape_configs"][1]["http_sd_configs"][0]["refresh_interval"] = "soon"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(broken))
    refused = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert refused.returncode != 0 and "FAILED" in refused.stdout + refused.stderr


def test_alert_rules_are_valid():
    rules = alert_rules()
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
    names = {rule["alert"] for rule in rules}
    assert {
        "HoneJobFailureRatioHigh",
        "HoneQueueWaitHigh",
        "HoneEndpointDown",
        "HoneGateway5xxRatioHigh",
        "HoneTrainerStalled",
        "HoneControlPlaneDown",
        "HoneSchedulerLagging",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert "for" in rule, f"{rule['alert']} has no `for:`"


def runbook_sections() -> dict[str, str]:
    """docs/runbooks.md's `## ` sections: GitHub's anchor -> the section's text."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"): body
        for title, body in zip(parts[1::2], parts[2::2])
    }


def test_every_alert_has_a_runbook():
    """Every alert's runbook_url is docs/runbooks.md#<its name>, a heading there, whose section says what the alert
    means, what to check first, the likely causes and the fix; and the runbook has no section for an alert that
    no longer exists."""
    found = anchors(RUNBOOKS)
    sections = runbook_sections()
    names = set()
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md" and (REPO / path).is_file(), f"{rule['alert']}: runbook_url {url!r}"
        assert anchor == rule["alert"].lower() and anchor in found, f"{rule['alert']}: no heading #{anchor}"
        for part in ("**Means**", "**First checks**", "**Likely causes**", "**Fix**"):
            assert part in sections[anchor], f"docs/runbooks.md#{anchor} has no {part}"
        names.add(anchor)
    alert_like = {anchor for anchor in sections if anchor.startswith("hone")}
    assert alert_like == names, f"runbook sections without an alert: {alert_like - names}"
    # ... and the check can fail: a runbook_url whose anchor is missing is caught.
    assert "honeno-such-alert" not in found


def test_alert_rule_unit_tests_pass():
    tested = promtool("test", "rules", str(ALERTS_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout and "FAILED" not in tested.stdout


def test_every_alert_is_tested_firing_and_quiet():
    firing, quiet = set(), set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"
    assert load_yaml(ALERTS_TEST)["rule_files"] == ["alerts.yml"]


# Each rule's guard (threshold, minimum count, label filter, dedup over replicas) taken out, one at a time: the
# unit tests must then fail, or they do not test that guard.
WEAKENINGS = [
    ('          and\n          sum(increase(hone_job_transitions_total{to="failed"}[1h])) >= 3\n', ""),
    ('to=~"succeeded|failed|cancelled"', 'to=~"succeeded|failed"'),
    (
        'hone_loop_last_success_timestamp_seconds{loop="scheduler"} > 0)',
        'hone_loop_last_success_timestamp_seconds{loop="scheduler"})',
    ),
    ('hone_loop_lag_seconds{loop="scheduler"}', "hone_loop_lag_seconds"),
    ("max by (endpoint_id, model, base_model) (hone_endpoint_up)", "hone_endpoint_up"),
    (
        "max by (job_id, project_id, base_model) (hone_job_last_step_timestamp_seconds)",
        "hone_job_last_step_timestamp_seconds",
    ),
    ('hone_gateway_requests_total{status=~"5.."}', 'hone_gateway_requests_total{status!~"2.."}'),
    ("max(hone_queue_oldest_wait_seconds) > 3600", "max(hone_queue_oldest_wait_seconds) > 360"),
    ('up{job="hone"} == 0\n        for: 2m', 'up{job="hone"} == 0\n        for: 0m'),
    ("(hone_job_last_step_timestamp_seconds) > 900", "(hone_job_last_step_timestamp_seconds) > 90"),
    (
        "sum by (instance, loop) (increase(hone_loop_errors_total[15m])) >= 3",
        "sum by (instance, loop) (increase(hone_loop_errors_total[15m])) >= 1",
    ),
    ("rate(hone_storage_errors_total[5m])) > 0", "rate(hone_storage_errors_total[5m])) >= 0"),
]


def test_alert_unit_tests_catch_weakened_rules(tmp_path):
    source = ALERTS.read_text()

    def run(i: int) -> tuple[str, subprocess.CompletedProcess]:
        old, new = WEAKENINGS[i]
        assert source.count(old) == 1, f"weakening {i} no longer matches alerts.yml: {old!r}"
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "alerts.yml").write_text(source.replace(old, new))
        shutil.copy(ALERTS_TEST, folder / "alerts_test.yml")
        return old, promtool("test", "rules", "alerts_test.yml", cwd=folder)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(len(WEAKENINGS))))
    for old, result in results:
        assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, (
            f"the unit tests still pass with {old!r} weakened"
        )


# ---- the dashboard --------------------------------------------------------------------------------------------


def test_dashboard_is_importable_grafana_json():
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["title"] and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"].strip(), panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


def test_dashboard_covers_what_operators_look_at():
    names = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    for wanted in [
        "hone_jobs",
        "hone_queue_depth",
        "hone_queue_oldest_wait_seconds",
        "hone_queue_wait_seconds_bucket",
        "hone_job_transitions_total",
        "hone_job_tokens_per_second",
        "hone_job_step_seconds",
        "hone_job_train_loss",
        "hone_job_valid_loss",
        "hone_trained_tokens_total",
        "hone_trainer_retries_total",
        "hone_endpoints",
        "hone_endpoint_up",
        "hone_gateway_requests_total",
        "hone_gateway_request_duration_seconds_bucket",
        "hone_gateway_time_to_first_token_seconds_bucket",
        "hone_gateway_tokens_total",
        "hone_http_requests_total",
        "hone_http_request_duration_seconds_bucket",
        "hone_storage_operation_seconds_bucket",
        "hone_storage_errors_total",
        "hone_loop_lag_seconds",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
    ]:
        assert wanted in names, wanted


def panel(title: str) -> dict:
    [found] = [p for p in dashboard_panels() if p.get("title") == title]
    return found


_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*(\{[^{}]*\})?")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its label matchers or '') for every metric an expression reads."""
    names = metric_names(expr)
    return [(m.group(1), m.group(2) or "") for m in _SELECTOR.finditer(expr) if m.group(1) in names]


def test_dashboard_has_the_ops_panels():
    """The failure-reason panels, engine memory, and one panel per GPU figure of dcgm-exporter."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert [p["title"] for p in dashboard_panels() if p["type"] == "row"].count("GPUs (DCGM exporter)") == 1

    failures = panel("Job failures by reason")
    [target] = failures["targets"]
    assert "hone_job_failures_total" in metric_names(target["expr"]) and "sum by (reason)" in target["expr"]
    assert "{{reason}}" in target["legendFormat"]
    table = panel("Failures by reason and project (dashboard range)")
    [target] = table["targets"]
    assert "sum by (reason, project_id)" in target["expr"] and "$__range" in target["expr"] and target["instant"]

    memory = panel("Engine resident memory")
    assert memory["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert [(name, 'job="hone-engines"' in m) for t in memory["targets"] for name, m in selectors(t["expr"])] == [
        ("process_resident_memory_bytes", True)
    ]
    assert "vllm:kv_cache_usage_perc" in metric_names(panel("KV-cache usage")["targets"][0]["expr"])

    gpu = {
        "GPU utilization": ({"DCGM_FI_DEV_GPU_UTIL"}, "percent"),
        "GPU memory used": ({"DCGM_FI_DEV_FB_USED"}, "bytes"),
        "GPU memory used (share)": ({"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}, "percentunit"),
        "GPU power": ({"DCGM_FI_DEV_POWER_USAGE"}, "watt"),
    }
    for title, (names, unit) in gpu.items():
        found = panel(title)
        assert set().union(*(metric_names(t["expr"]) for t in found["targets"])) == names, title
        assert found["fieldConfig"]["defaults"]["unit"] == unit, title
        assert "no data where no GPU" in found["description"], title
    assert set().union(*(names for names, _ in gpu.values())) == DCGM_NAMES
    assert "project" in variables


def test_dashboard_filters_by_project():
    """A `project` variable (multi, All = any), listing the project_id values of Hone's series; every selector
    of a metric that carries project_id filters on it, and the rest (which carry none) do not."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    project = variables["project"]
    assert project["type"] == "query" and project["multi"] and project["includeAll"] and project["allValue"] == ".*"
    query = project["query"]["query"]
    assert re.fullmatch(r"label_values\((.+),\s*project_id\)", query), query
    filtered, unfiltered = set(), []
    for where, expr in dashboard_exprs():
        for name, matchers in selectors(expr):
            if name in PROJECT_LABELLED:
                assert 'project_id=~"$project"' in matchers, f"{where}: {name}{matchers} is not filtered by project"
                filtered.add(name)
            elif "$project" in matchers:
                unfiltered.append(f"{where}: {name} has no project_id label")
    assert unfiltered == []
    assert {"hone_job_failures_total", "hone_endpoint_up", "hone_job_tokens_per_second", "hone_job_step"} <= filtered
    # The selector reader sees matchers (so the filter check above checks something).
    assert selectors('max by (job_id) (hone_job_step{project_id=~"$project"}) / hone_job_total_steps') == [
        ("hone_job_step", '{project_id=~"$project"}'),
        ("hone_job_total_steps", ""),
    ]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query (Grafana's variables filled in) as a recording rule's expression."""
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": as_promql(e)} for i, (_, e) in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


# ---- every metric named is exported ---------------------------------------------------------------------------


def test_engine_metrics_named_are_exported_by_the_engine():
    known = engine_names()
    exprs = [(where, expr) for where, expr in dashboard_exprs() + alert_exprs() if "vllm:" in expr]
    assert exprs, "the dashboard has engine panels"
    unknown = {name: where for name, where in unknown_names(exprs, known).items() if name.startswith("vllm:")}
    assert unknown == {}, f"not exported by inference/metrics.py: {unknown}"


def test_reference_metrics_parser():
    section = (
        "### 1.11 Prometheus metrics (0.33)\n\n| Metric | Type | Notes |\n|---|---|---|\n"
        "| `vllm:a_b` / `vllm:e2e_x_seconds` | histogram | `vllm:old_seconds` gone in 0.33 |\n"
        '| `vllm:w_by_reason{reason="c"\\|"d"}` | gauge | |\n'
        "| `vllm:x_total{finished_reason}`, `vllm:y2_total` | counter | |\n"
        "| `vllm:info` | gauge(info) | |\n| `http_requests_total` | instrumentator | |\n\n## 2. Next\n"
        "| `vllm:later` | gauge | |\n"
    )
    assert reference_families(metrics_section(section)) == {
        "vllm:a_b": "histogram",
        "vllm:e2e_x_seconds": "histogram",
        "vllm:w_by_reason": "gauge",
        "vllm:x_total": "counter",
        "vllm:y2_total": "counter",
        "vllm:info": "gauge",
    }
    assert series_names({"vllm:i_total": "histogram", "vllm:c_total": "counter"}) == {
        "vllm:i_total_bucket",
        "vllm:i_total_sum",
        "vllm:i_total_count",
        "vllm:c_total",
    }
    families = vllm_families()
    assert len(families) >= 20 and families["vllm:e2e_request_latency_seconds"] == "histogram"
    assert families["vllm:iteration_tokens_total"] == "histogram" and families["vllm:cache_config_info"] == "gauge"
    assert "vllm:gpu_cache_usage_perc" not in families and "vllm:time_per_output_token_seconds" not in families


def test_engine_metrics_named_are_vllm_metrics():
    """The dashboard and alerts work against a real vLLM too: every vllm:* name they read is one vLLM 0.33
    exports (reference §1.11), not only one the built-in engine does."""
    exprs = [(where, expr) for where, expr in dashboard_exprs() + alert_exprs() if "vllm:" in expr]
    unknown = {
        name: where
        for name, where in unknown_names(exprs, series_names(vllm_families())).items()
        if name.startswith("vllm:")
    }
    assert unknown == {}, f"not exported by vLLM 0.33 (reference §1.11): {unknown}"


def test_the_engine_exports_every_vllm_metric():
    """Every family of reference §1.11 is in the built-in engine's exposition (with --enable-lora), same type."""
    exported = {}
    for line in engine_exposition().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            exported[name] = kind.strip()
    missing = {name: kind for name, kind in vllm_families().items() if exported.get(name) != kind}
    assert missing == {}, f"not exported by inference/metrics.py as vLLM does: {missing}"


def test_metrics_named_are_exported_by_hone(hone):
    known = control_plane_names(hone) | engine_names() | PROMETHEUS_OWN | exported_names(DCGM_EXPOSITION)
    assert exported_names(DCGM_EXPOSITION) == DCGM_NAMES
    assert PROJECT_LABELLED <= control_plane_names(hone)
    unknown = unknown_names(dashboard_exprs() + alert_exprs(), known)
    assert unknown == {}, f"named in deploy/ but not exported by Hone: {unknown}"


# ---- a real Prometheus runs the shipped config ----------------------------------------------------------------


class FakeDcgmExporter:
    """Stands in for NVIDIA's dcgm-exporter (no GPU here): answers /metrics with DCGM_EXPOSITION."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = DCGM_EXPOSITION.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(folder / "prometheus.log", "wb")
        self.log_path = folder / "prometheus.log"
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: scripts/setup.sh installs Debian's prometheus package (as root)"
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.url + "/-/ready", timeout=60, proc=self.proc)  # 503 until the TSDB is open
        except BaseException:
            self.stop()
            raise

    def get(self, path: str, **params) -> dict:
        reply = httpx.get(self.url + path, params=params, timeout=10)
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    def wait(self, what: str, check, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if value := check():
                    return value
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} within {timeout}s\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def test_prometheus_scrapes_hone_and_its_engines_with_the_shipped_config(hone, tmp_path):
    """The shipped prometheus.yml, with only the control plane's and dcgm-exporter's addresses and the intervals
    changed, scrapes the control plane, finds a running engine through the admin-key-protected service discovery,
    scrapes it and the (stand-in) GPU exporter, and evaluates every alert rule and dashboard query without error;
    the engine-memory and GPU panels get data."""
    project = hone.new_project("observability")
    http = project.http()
    created = http.post("/v1/endpoints", json={"model": "hone-tiny"})  # an engine (the fake) for the base model
    assert created.status_code in (200, 201), created.text
    dcgm = FakeDcgmExporter()
    try:
        _scrape_with_the_shipped_config(hone, http, tmp_path, dcgm, project.project_id)
    finally:
        dcgm.stop()
        http.delete(f"/v1/endpoints/{created.json()['id']}")  # the deployer stops its engine
        http.close()


def _scrape_with_the_shipped_config(
    hone: HoneServer, http: httpx.Client, tmp_path: Path, dcgm: FakeDcgmExporter, project_id: str
):
    endpoint = wait_endpoint(http, "hone-tiny")
    assert endpoint["state"] == "ready", endpoint
    answer = http.post(
        "/v1/chat/completions",
        json={"model": "hone-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200, answer.text

    config = load_yaml(CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    shipped = "127.0.0.1:8000"
    here = f"127.0.0.1:{hone.port}"
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        for static in job.get("static_configs", []):
            if job["job_name"] == "dcgm":
                assert static["targets"] == ["127.0.0.1:9400"]
                static["targets"] = [dcgm.address]
                continue
            assert static["targets"] == [shipped]
            static["targets"] = [here]
        for sd in job.get("http_sd_configs", []):
            assert urlparse(sd["url"]).netloc == shipped
            sd["url"] = sd["url"].replace(shipped, here)
            sd["refresh_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / config["scrape_configs"][1]["http_sd_configs"][0]["authorization"]["credentials_file"]).write_text(
        hone.admin_key + "\n"
    )
    (tmp_path / config["scrape_configs"][0]["authorization"]["credentials_file"]).write_text(METRICS_TOKEN + "\n")

    prometheus = Prometheus(tmp_path)
    try:

        def targets_up():
            active = prometheus.get("/api/v1/targets", state="active")["activeTargets"]
            up = [t for t in active if t["health"] == "up"]
            return active if {t["labels"]["job"] for t in up} == {"hone", "hone-engines", "dcgm"} else None

        active = prometheus.wait("the control plane, the engine and dcgm-exporter scraped", targets_up)
        [engine] = [t for t in active if t["labels"]["job"] == "hone-engines"]
        labels = engine["labels"]  # as the control plane's service discovery gave them
        assert (labels["endpoint_id"], labels["model"], labels["base_model"]) == (
            endpoint["id"],
            "hone-tiny",
            "hone-tiny",
        ), labels
        assert engine["scrapeUrl"] == f"http://{labels['instance']}/metrics"

        def rules_evaluated():
            groups = prometheus.get("/api/v1/rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

        rules = prometheus.wait("every alert rule evaluated", rules_evaluated)
        assert len(rules) == len(alert_rules())
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

        # Series from both exporters arrive under the names the dashboard uses.
        for query in [
            'up{job="hone"}',
            "hone_build_info",
            f'hone_endpoint_up{{base_model="hone-tiny", project_id="{project_id}"}}',
            'vllm:num_requests_running{job="hone-engines"}',
            'vllm:generation_tokens_total{job="hone-engines"}',
            'process_resident_memory_bytes{job="hone-engines"}',
            'DCGM_FI_DEV_GPU_UTIL{job="dcgm"}',
        ]:
            prometheus.wait(f"{query} has data", lambda: prometheus.get("/api/v1/query", query=query)["result"])

        def panel_values(title: str) -> list[float]:
            [target] = panel(title)["targets"]
            result = prometheus.get("/api/v1/query", query=as_promql(target["expr"]))["result"]
            return [float(series["value"][1]) for series in result]

        # The engine-memory and GPU panels show the figures as the exporters gave them.
        assert [v > 1e6 for v in panel_values("Engine resident memory")] == [True]
        assert panel_values("GPU utilization") == [87.0]
        assert panel_values("GPU memory used") == [71000 * 1048576]
        assert panel_values("GPU memory used (share)") == [pytest.approx(71000 / 81240)]
        assert panel_values("GPU power") == [512.5]
        # The project variable lists the project whose endpoint runs, and the readiness panel filters by it.
        [variable] = variable_query_exprs(next(v for v in dashboard()["templating"]["list"] if v["name"] == "project"))
        series = prometheus.get("/api/v1/series", **{"match[]": variable})
        assert project_id in {s.get("project_id") for s in series}
        [readiness] = panel("Endpoint readiness")["targets"]
        only = readiness["expr"].replace("$project", project_id).replace("$base_model", ".*")
        assert len(prometheus.get("/api/v1/query", query=only)["result"]) == 1
        other = readiness["expr"].replace("$project", "proj_nobody").replace("$base_model", ".*")
        assert prometheus.get("/api/v1/query", query=other)["result"] == []

        # Every dashboard query runs against the live data without an evaluation error.
        failures = {}
        for where, expr in dashboard_exprs():
            reply = httpx.get(prometheus.url + "/api/v1/query", params={"query": as_promql(expr)}, timeout=10)
            if reply.status_code != 200 or reply.json()["status"] != "success":
                failures[where] = reply.text
        assert failures == {}
    finally:
        prometheus.stop()
