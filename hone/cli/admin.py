"""`hone projects` and `hone keys`: projects and their API keys, with the admin key."""

from __future__ import annotations

import typer

from hone.cli.common import Session, api_command, table, when

projects_app = typer.Typer(no_args_is_help=True, help="Projects (admin key).")
grants_app = typer.Typer(
    no_args_is_help=True, help="Buckets and prefixes a project's Vertex dataset URIs may read (admin key)."
)
projects_app.add_typer(grants_app, name="grants")
keys_app = typer.Typer(no_args_is_help=True, help="Project API keys, as service accounts (admin key).")


@api_command(projects_app, "create", admin=True)
def projects_create(session: Session, name: str):
    """Create a project and print its id."""
    project = session.client.projects.create(name)
    session.show(project, project.id)


@api_command(projects_app, "list", admin=True)
def projects_list(session: Session, include_archived: bool = typer.Option(False, "--include-archived")):
    """List projects."""
    projects = list(session.client.projects.list(include_archived=include_archived))
    session.show(
        projects,
        lambda: table(
            ["id", "name", "status", "created"], [(p.id, p.name, p.status, when(p.created_at)) for p in projects]
        ),
    )


@api_command(projects_app, "delete", admin=True)
def projects_delete(session: Session, project_id: str):
    """Archive a project: its keys stop working; its files, jobs and models are kept."""
    session.show(session.client.projects.delete(project_id), f"archived {project_id}")


@api_command(grants_app, "add", admin=True)
def grants_add(session: Session, project_id: str, uri: str):
    """Let the project read dataset objects under URI (s3://bucket/prefix/ or gs://bucket/prefix/); print the id."""
    grant = session.client.projects.add_grant(project_id, uri)
    session.show(grant, grant.id)


@api_command(grants_app, "list", admin=True)
def grants_list(session: Session, project_id: str):
    """List the project's dataset grants."""
    grants = list(session.client.projects.list_grants(project_id))
    session.show(grants, lambda: table(["id", "uri", "created"], [(g.id, g.uri, when(g.created_at)) for g in grants]))


@api_command(grants_app, "remove", admin=True)
def grants_remove(session: Session, project_id: str, grant_id: str):
    """Remove a dataset grant: the project's new jobs can no longer read under it."""
    session.show(session.client.projects.remove_grant(project_id, grant_id), f"removed {grant_id}")


@api_command(keys_app, "create", admin=True)
def keys_create(session: Session, project_id: str, name: str = typer.Option("default", "--name")):
    """Create a service account and print its API key (shown only once)."""
    account = session.client.keys.create(project_id, name)
    session.show(account, account.api_key.value if account.api_key else "")


@api_command(keys_app, "list", admin=True)
def keys_list(session: Session, project_id: str):
    """List a project's service accounts and their redacted keys."""
    accounts = list(session.client.keys.list(project_id))
    session.show(
        accounts,
        lambda: table(
            ["id", "name", "key", "created"],
            [(a.id, a.name, a.api_key.redacted_value if a.api_key else "", when(a.created_at)) for a in accounts],
        ),
    )


@api_command(keys_app, "delete", admin=True)
def keys_delete(session: Session, project_id: str, service_account_id: str):
    """Delete a service account: its key stops working."""
    session.show(session.client.keys.delete(project_id, service_account_id), f"deleted {service_account_id}")
