"""The `hone` command line: run the server, manage projects and API keys as an admin, and endpoints."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import httpx
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Hone: self-hosted fine-tuning.")
projects_app = typer.Typer(no_args_is_help=True, help="Projects (admin key).")
keys_app = typer.Typer(no_args_is_help=True, help="Project API keys, as service accounts (admin key).")
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
endpoints_app = typer.Typer(no_args_is_help=True, help="Endpoints serving tuned models (project key).")
app.add_typer(endpoints_app, name="endpoints")

BaseUrl = typer.Option("http://127.0.0.1:8000", "--base-url", envvar="HONE_BASE_URL", help="Control-plane URL.")
AdminKey = typer.Option(..., "--admin-key", envvar="HONE_ADMIN_API_KEY", help="The admin API key.")
AsJson = typer.Option(False, "--json", help="Print the raw JSON response.")
ApiKey = typer.Option(..., "--api-key", envvar="HONE_API_KEY", help="A project API key.")


def _call(method: str, base_url: str, key: str, path: str, body: dict | None = None,
          params: dict | None = None) -> Any:
    try:
        resp = httpx.request(method, base_url.rstrip("/") + path, json=body, params=params, timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {base_url}: {exc}", err=True)
        raise typer.Exit(3)
    data = resp.json() if resp.content else {}
    if resp.status_code >= 400:
        message = data.get("error", {}).get("message", resp.text) if isinstance(data, dict) else resp.text
        typer.echo(f"error ({resp.status_code}): {message}", err=True)
        raise typer.Exit(1 if resp.status_code < 500 else 2)
    return data


def _print(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2) if as_json else text)


@app.command()
def serve() -> None:
    """Start the control plane (settings from HONE_* environment variables)."""
    from service.server import serve as run_server  # server dependencies load only here

    run_server()


@projects_app.command("create")
def projects_create(name: str, base_url: str = BaseUrl, admin_key: str = AdminKey, as_json: bool = AsJson):
    data = _call("POST", base_url, admin_key, "/v1/organization/projects", {"name": name})
    _print(data, as_json, data["id"])


@projects_app.command("list")
def projects_list(base_url: str = BaseUrl, admin_key: str = AdminKey, as_json: bool = AsJson):
    items, after = [], None
    while True:
        page = _call("GET", base_url, admin_key, "/v1/organization/projects?limit=100" + (f"&after={after}" if after else ""))
        items += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    _print(items, as_json, "\n".join(f"{p['id']}\t{p['name']}\t{p['status']}" for p in items))


@projects_app.command("delete")
def projects_delete(project_id: str, base_url: str = BaseUrl, admin_key: str = AdminKey, as_json: bool = AsJson):
    data = _call("DELETE", base_url, admin_key, f"/v1/organization/projects/{project_id}")
    _print(data, as_json, f"archived {project_id}")


@keys_app.command("create")
def keys_create(project_id: str, name: str = typer.Option("default", "--name"), base_url: str = BaseUrl,
                admin_key: str = AdminKey, as_json: bool = AsJson):
    """Create a service account and print its API key (shown only once)."""
    data = _call("POST", base_url, admin_key, f"/v1/organization/projects/{project_id}/service_accounts",
                 {"name": name})
    _print(data, as_json, data["api_key"]["value"])


@keys_app.command("list")
def keys_list(project_id: str, base_url: str = BaseUrl, admin_key: str = AdminKey, as_json: bool = AsJson):
    data = _call("GET", base_url, admin_key, f"/v1/organization/projects/{project_id}/service_accounts?limit=100")
    _print(data["data"], as_json, "\n".join(f"{a['id']}\t{a['name']}" for a in data["data"]))


@keys_app.command("delete")
def keys_delete(project_id: str, service_account_id: str, base_url: str = BaseUrl, admin_key: str = AdminKey,
                as_json: bool = AsJson):
    data = _call("DELETE", base_url, admin_key,
                 f"/v1/organization/projects/{project_id}/service_accounts/{service_account_id}")
    _print(data, as_json, f"deleted {service_account_id}")


def _endpoint_line(ep: dict) -> str:
    error = f"\t{ep['error']['message']}" if ep.get("error") and ep["state"] in ("failed", "deploying") else ""
    return f"{ep['id']}\t{ep['state']}\t{ep['model']}{error}"


@endpoints_app.command("list")
def endpoints_list(model: Optional[str] = typer.Option(None, "--model", help="Only this model's endpoints."),
                   base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = AsJson):
    items, after = [], None
    while True:
        query = "limit=100" + (f"&after={after}" if after else "")
        page = _call("GET", base_url, api_key, "/v1/endpoints?" + query,
                     params={"model": model} if model else None)
        items += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    _print(items, as_json, "\n".join(_endpoint_line(ep) for ep in items))


@endpoints_app.command("get")
def endpoints_get(endpoint_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = AsJson):
    ep = _call("GET", base_url, api_key, f"/v1/endpoints/{endpoint_id}")
    usage = ep["usage"]
    _print(ep, as_json, _endpoint_line(ep) + f"\nbase {ep['base_model']}  engine {ep['engine']}  restarts "
           f"{ep['restarts']}\nrequests {usage['requests']}  errors {usage['errors']}  tokens "
           f"{usage['prompt_tokens']} in / {usage['completion_tokens']} out")


@endpoints_app.command("create")
def endpoints_create(model: str, wait: bool = typer.Option(False, "--wait", help="Wait until it is ready."),
                     timeout: float = typer.Option(300, "--timeout"), base_url: str = BaseUrl,
                     api_key: str = ApiKey, as_json: bool = AsJson):
    """Serve a tuned model (ft:...), a checkpoint, or a base model."""
    ep = _call("POST", base_url, api_key, "/v1/endpoints", {"model": model})
    deadline = time.monotonic() + timeout
    while wait and ep["state"] == "deploying" and time.monotonic() < deadline:
        time.sleep(0.5)
        ep = _call("GET", base_url, api_key, f"/v1/endpoints/{ep['id']}")
    _print(ep, as_json, _endpoint_line(ep))
    if wait and ep["state"] != "ready":
        raise typer.Exit(1)


@endpoints_app.command("delete")
def endpoints_delete(endpoint_id: str, base_url: str = BaseUrl, api_key: str = ApiKey, as_json: bool = AsJson):
    data = _call("DELETE", base_url, api_key, f"/v1/endpoints/{endpoint_id}")
    _print(data, as_json, f"deleted {endpoint_id}")


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:])
