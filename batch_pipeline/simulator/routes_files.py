"""``/v1/files``: streamed upload with JSONL validation, retrieve, list, delete and streamed content."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from .context import SimDep, Simulator, list_page, require_api_key
from .errors import bad_request
from .records import FileRecord
from .uploads import Upload, receive_upload, too_large
from .validation import expires_after_seconds

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

router = APIRouter(prefix="/v1/files", dependencies=[Depends(require_api_key)])


def _register(sim: Simulator, upload: Upload) -> FileRecord:
    fields, settings = upload.fields, sim.settings
    purpose = fields.get("purpose")
    if not purpose:
        raise bad_request(
            "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"Invalid value for 'purpose': {purpose!r}. Supported values are: {', '.join(UPLOAD_PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    if upload.path is None or upload.filename is None:
        raise bad_request(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    expires: int | None = None
    if anchor is not None or seconds is not None:
        expires = expires_after_seconds(anchor, seconds, "expires_after")
    elif purpose == "batch":
        expires = settings.file_expiry_seconds  # batch files expire after 30 days unless told otherwise
    summary = None
    if purpose == "batch":
        if not upload.filename.lower().endswith(".jsonl"):
            raise bad_request("Invalid file format for Batch API. Must be .jsonl", param="file")
        if upload.size > settings.max_file_bytes:
            raise too_large(settings.max_file_bytes)
        assert upload.validator is not None
        if upload.validator.error is not None:
            raise upload.validator.error
        summary = upload.validator.summary
    return sim.store.add_file(
        upload.path,
        filename=upload.filename,
        purpose=purpose,
        size=upload.size,
        expires_seconds=expires,
        summary=summary,
    )


@router.post("")
async def create_file(request: Request, sim: SimDep) -> dict[str, Any]:
    upload = await receive_upload(
        request,
        sim.store.spool_dir,
        max_batch_bytes=sim.settings.max_file_bytes,
        max_requests=sim.settings.max_requests_per_batch,
    )
    try:
        record = await run_in_threadpool(_register, sim, upload)
    finally:
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)  # already moved into the store when it was accepted
    return record.to_api()


@router.get("")
def list_files(
    sim: SimDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    page, has_more = sim.store.list_files(purpose=purpose, limit=limit, after=after, order=order)
    return list_page([f.to_api() for f in page], has_more)


@router.get("/{file_id}")
def retrieve_file(file_id: str, sim: SimDep) -> dict[str, Any]:
    return sim.store.get_file(file_id).to_api()


@router.delete("/{file_id}")
def delete_file(file_id: str, sim: SimDep) -> dict[str, Any]:
    record = sim.store.delete_file(file_id)
    return {"id": record.id, "object": "file", "deleted": True}


@router.get("/{file_id}/content")
def file_content(file_id: str, sim: SimDep) -> FileResponse:
    record = sim.store.get_file(file_id)
    # FileResponse streams from disk in chunks; a 200 MB file is never held in memory.
    return FileResponse(record.file_path, media_type="application/octet-stream")
