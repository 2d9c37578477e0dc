"""The expiry sweep, called directly on an AppContext over SQLite and a local folder."""

from sqlalchemy import select

from service.context import AppContext
from service.db.tables import File, Job, Project
from service.files import expire_files
from service.settings import Settings


def _file(file_id: str, project_id: str, expires_at: int) -> File:
    return File(
        id=file_id,
        project_id=project_id,
        filename=f"{file_id}.jsonl",
        purpose="fine-tune",
        bytes=1,
        created_at=0,
        expires_at=expires_at,
        status="processed",
        storage_key=f"files/{file_id}",
    )


def test_files_in_use_do_not_starve_the_sweep(tmp_path):
    ctx = AppContext.build(Settings(data_dir=tmp_path, admin_api_key="adm"))
    with ctx.db.write() as session:
        session.add(Project(id="proj_a", name="a", slug="a", created_at=0))
        session.flush()
        session.add_all([_file("file-used", "proj_a", 1), _file("file-loose", "proj_a", 2)])
        session.flush()
        session.add(
            Job(
                id="ftjob-a",
                project_id="proj_a",
                model="hone-tiny",
                base_model="hone-tiny",
                status="queued",
                created_at=0,
                training_file="file-used",
                method={"type": "supervised"},
                seed=1,
                result_files=[],
            )
        )
    for key in ("files/file-used", "files/file-loose"):
        ctx.storage.put_bytes(key, b"x")

    # A batch of one: the in-use file expired first, and must not take the only slot every time.
    assert expire_files(ctx, batch=1) == 1
    with ctx.db.read() as session:
        assert session.execute(select(File.id)).scalars().all() == ["file-used"]
    assert ctx.storage.list("files/") == ["files/file-used"]
    ctx.db.dispose()
