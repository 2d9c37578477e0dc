"""`hone files`: validate training data offline, upload it, list, show, download and delete what is stored."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from hone.cli.common import EXIT_REFUSED, Session, api_command, err, out, print_json, table, when

if TYPE_CHECKING:
    from hone.types import FileObject
from hone_kernel.datasets import (
    FORMAT_LABELS,
    MIN_TRAINING_EXAMPLES,
    DatasetReport,
    filename_problem,
    too_few_examples,
    validate_file,
)

files_app = typer.Typer(no_args_is_help=True, help="Training files (project key).")

PROGRESS_BAR_FROM_BYTES = 1 << 20  # smaller uploads finish before a bar would show anything
ExistingFile = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="A JSON Lines file.")


def _check_locally(path: Path, min_examples: int = 0) -> tuple[DatasetReport, list[str]]:
    """The server's own checks, run here: the file's name, every line, then (for a file a job will train on) the
    number of examples a job needs."""
    report = validate_file(path)
    problems = [problem] if (problem := filename_problem(path.name)) else []
    problems += [str(error) for error in report.errors]
    if report.total_errors > len(report.errors):
        problems.append(f"and {report.total_errors - len(report.errors)} more error(s)")
    if report.ok and (too_few := too_few_examples(report.examples, min_examples)):
        problems.append(too_few)
    return report, problems


def _report_json(path: Path, report: DatasetReport, problems: list[str]) -> dict:
    return {
        "file": str(path),
        "ok": not problems,
        "format": report.format.value if report.format else None,
        "examples": report.examples,
        "lines": report.lines,
        "images": report.images,
        "image_examples": report.image_examples,
        # named by file id or bucket URI: the server reads and checks these on upload, this check cannot
        "unchecked_image_refs": len(report.image_refs),
        "total_errors": report.total_errors,
        "errors": [e.as_dict() for e in report.errors],
        "problems": problems,
    }


def _print_report(path: Path, report: DatasetReport, problems: list[str]) -> None:
    kind = FORMAT_LABELS[report.format] if report.format else "unknown format"
    verdict = "[green]valid[/]" if not problems else f"[red]{len(problems)} problem(s)[/]"
    images = f", {report.images} image(s)" if report.images else ""
    if report.image_refs:
        images += f" ({len(report.image_refs)} named by file id or URI: checked on upload)"
    err.print(f"{path.name}: {verdict}: {kind}, {report.examples} example(s) in {report.lines} line(s){images}")
    for problem in problems:
        err.print(f"  {problem}", markup=False)


@files_app.command("validate")
def files_validate(
    path: Path = ExistingFile,
    as_json: bool = typer.Option(False, "--json"),
    min_examples: int = typer.Option(
        MIN_TRAINING_EXAMPLES,
        "--min-examples",
        min=0,
        help="Examples a job needs to train on the file: the server's HONE_MIN_TRAINING_EXAMPLES "
        "(10 by default, as OpenAI); 1 for a validation file.",
    ),
):
    """Check a fine-tuning file offline, with the validator the server runs on upload and the minimum number of
    examples a job needs."""
    report, problems = _check_locally(path, min_examples)
    if as_json:
        print_json(_report_json(path, report, problems))
    else:
        _print_report(path, report, problems)
    if problems:
        raise typer.Exit(EXIT_REFUSED)


def upload(session: Session, path: Path, purpose: str = "fine-tune", validate: bool = True) -> FileObject:
    """Validates (fine-tune files) and uploads, with a progress bar on a terminal for large files."""
    if validate and purpose == "fine-tune":
        report, problems = _check_locally(path)
        if problems:
            if session.as_json:
                print_json(_report_json(path, report, problems))
            else:
                _print_report(path, report, problems)
            err.print("not uploaded; fix the file, or pass --no-validate to let the server judge it")
            raise typer.Exit(EXIT_REFUSED)
    size = path.stat().st_size
    if size < PROGRESS_BAR_FROM_BYTES or session.as_json:
        return session.client.files.create(path, purpose)
    columns = (
        TextColumn("uploading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(path.name, total=size)
        return session.client.files.create(
            path, purpose, on_progress=lambda sent, total: progress.update(task, completed=sent)
        )


def describe(file: FileObject) -> str:
    summary = f"{file.id}: {file.filename}, {file.bytes} bytes, {file.status}"
    if file.dataset and file.dataset.format:
        summary += f", {file.dataset.format}, {file.dataset.examples} example(s)"
    return summary + (f"\n  {file.status_details}" if file.status_details else "")


@api_command(files_app, "upload")
def files_upload(
    session: Session,
    path: Path = ExistingFile,
    purpose: str = typer.Option("fine-tune", "--purpose"),
    validate: bool = typer.Option(
        True, "--validate/--no-validate", help="Check the file here first, as the server will."
    ),
):
    """Upload a file (validated here first) and print its id."""
    file = upload(session, path, purpose, validate)
    if not session.as_json:
        err.print(describe(file), markup=False)
    session.show(file, file.id)
    if file.status == "error":
        raise typer.Exit(EXIT_REFUSED)


@api_command(files_app, "list")
def files_list(session: Session, purpose: str | None = typer.Option(None, "--purpose")):
    """List the project's files, newest first."""
    files = list(session.client.files.list(purpose=purpose))
    session.show(
        files,
        lambda: table(
            ["id", "filename", "bytes", "purpose", "status", "examples", "created"],
            [
                (
                    f.id,
                    f.filename,
                    f.bytes,
                    f.purpose,
                    f.status,
                    f.dataset.examples if f.dataset else "",
                    when(f.created_at),
                )
                for f in files
            ],
        ),
    )


@api_command(files_app, "get")
def files_get(session: Session, file_id: str):
    """Show a file: name, size, status, and the server's verdict on a fine-tune file."""
    file = session.client.files.retrieve(file_id)
    session.show(file, lambda: describe(file))


@api_command(files_app, "download")
def files_download(
    session: Session,
    file_id: str,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write it here ('-' for stdout; default: the file's name, here)."
    ),
):
    """Download a file's content as stored (result files come base64-encoded, as OpenAI serves them); prints
    where it went."""
    data = session.client.files.content(file_id)
    if output is not None and str(output) == "-":
        out.file.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = output or Path(Path(session.client.files.retrieve(file_id).filename).name or file_id)
    path.write_bytes(data)
    session.show({"id": file_id, "path": str(path), "bytes": len(data)}, str(path))


@api_command(files_app, "delete")
def files_delete(session: Session, file_id: str):
    """Delete a file (refused while an active job uses it)."""
    session.show(session.client.files.delete(file_id), f"deleted {file_id}")
