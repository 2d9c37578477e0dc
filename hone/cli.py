"""The `hone` command line: run the server, and manage projects and API keys as an admin."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import httpx
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Hone: self-hosted fine-tuning.")
projects_app = typer.Typer(no_args_is_help=True, help="Projects (admin key).")
keys_app = typer.Typer(no_args_is_help=True, help="Project API keys, as service accounts (admin key).")
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")

BaseUrl = typer.Option("http://127.0.0.1:8000", "--base-url", envvar="HONE_BASE_URL", help="Control-plane URL.")
AdminKey = typer.Option(..., "--admin-key", envvar="HONE_ADMIN_API_KEY", help="The admin API key.")
AsJson = typer.Option(False, "--json", help="Print the raw JSON response.")


def _call(method: str, base_url: str, key: str, path: str, body: dict | None = None) -> Any:
    try:
        resp = httpx.request(method, base_url.rstrip("/") + path, json=body, timeout=30,
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


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:])
