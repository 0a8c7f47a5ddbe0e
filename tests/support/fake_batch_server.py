"""A loopback server for the OpenAI files and batches endpoints (tests and demos).

It implements what the official ``openai`` client uses for a batch job:
``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches``,
``POST /v1/batches/{id}/cancel``, on top of the chat endpoints of ``harness.serve``
(so the normal run that follows can be checked to send nothing).

A batch advances when it is polled: each ``retrieve`` answers up to ``step`` requests
with the backend, so a test controls progress without clocks. ``expire_after`` makes
every batch expire once that many of its requests were answered; the rest are listed
in the error file with code ``batch_expired``, as the real API does. ``answered``
counts how often each ``custom_id`` was answered, across all batches.
"""
from __future__ import annotations

import asyncio
import collections
import email.parser
import email.policy
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from harness.backends.base import Backend, GenRequest, GenResult
from harness.serve import build_app


class BatchServerState:
    def __init__(self, step: int | None = None, expire_after: int | None = None):
        self.step = step
        self.expire_after = expire_after
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.pending: dict[str, list[dict]] = {}  # batch id -> input lines not yet answered
        self.results: dict[str, list[str]] = {}  # batch id -> output lines
        self.answered: collections.Counter = collections.Counter()
        self.uploaded_lines = 0


def _file_object(fid: str, f: dict) -> dict:
    return {"id": fid, "object": "file", "bytes": len(f["content"]), "created_at": f["created_at"],
            "filename": f["filename"], "purpose": f["purpose"], "status": "processed"}


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_payload(decode=True))
    return parts


def _request_from_body(body: dict) -> GenRequest:
    return GenRequest(messages=body["messages"], max_tokens=int(body.get("max_tokens") or 256),
                      temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                      stop=body.get("stop"), logprobs=bool(body.get("logprobs")),
                      top_logprobs=int(body.get("top_logprobs") or 0), seed=body.get("seed"),
                      continue_final_message=bool(body.get("continue_final_message")))


def _chat_body(model: str, res: GenResult) -> dict:
    lps = None
    if res.logprobs is not None:
        lps = {"content": [{"token": t.token, "logprob": t.logprob,
                            "top_logprobs": [{"token": a, "logprob": b} for a, b in t.top]} for t in res.logprobs]}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                                         "finish_reason": res.finish_reason or "stop", "logprobs": lps}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                      "total_tokens": res.prompt_tokens + res.completion_tokens}}


def build_batch_app(backend: Backend, served_name: str = "judge", step: int | None = None,
                    expire_after: int | None = None):
    app = build_app(backend, served_name)
    st = BatchServerState(step, expire_after)
    app.state.batch = st
    lock = asyncio.Lock()

    def new_file(content: bytes, filename: str, purpose: str) -> str:
        fid = f"file-{uuid.uuid4().hex[:16]}"
        st.files[fid] = {"content": content, "filename": filename, "purpose": purpose, "created_at": int(time.time())}
        return fid

    def not_found(what: str):
        return JSONResponse({"error": {"message": f"No such {what}", "type": "invalid_request_error"}},
                            status_code=404)

    @app.post("/v1/files")
    async def upload(request: Request):
        parts = _parse_multipart(request.headers["content-type"], await request.body())
        if "file" not in parts or "purpose" not in parts:
            return JSONResponse({"error": {"message": "file and purpose are required"}}, status_code=400)
        filename, content = parts["file"]
        fid = new_file(content, filename or "upload.jsonl", parts["purpose"][1].decode())
        return _file_object(fid, st.files[fid])

    @app.get("/v1/files/{fid}")
    async def file_info(fid: str):
        return _file_object(fid, st.files[fid]) if fid in st.files else not_found("file")

    @app.get("/v1/files/{fid}/content")
    async def file_content(fid: str):
        if fid not in st.files:
            return not_found("file")
        return Response(st.files[fid]["content"], media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create(request: Request):
        body = await request.json()
        fid = body.get("input_file_id")
        if fid not in st.files or st.files[fid]["purpose"] != "batch":
            return JSONResponse({"error": {"message": f"input_file_id {fid!r}: no batch file"}}, status_code=400)
        lines = [json.loads(ln) for ln in st.files[fid]["content"].decode().splitlines() if ln.strip()]
        st.uploaded_lines += len(lines)
        bid = f"batch_{uuid.uuid4().hex[:16]}"
        st.batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                           "input_file_id": fid, "completion_window": body["completion_window"],
                           "status": "validating", "output_file_id": None, "error_file_id": None,
                           "created_at": int(time.time()), "metadata": body.get("metadata"),
                           "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        st.pending[bid] = lines
        st.results[bid] = []
        return st.batches[bid]

    async def advance(bid: str) -> None:
        b = st.batches[bid]
        if b["status"] in ("completed", "expired", "cancelled", "failed"):
            return
        if b["status"] == "cancelling":
            finish(bid, "cancelled")
            return
        if b["status"] == "validating":  # the first poll only sees it start
            b["status"], b["in_progress_at"] = "in_progress", int(time.time())
            return
        todo = st.pending[bid]
        n = len(todo) if st.step is None else min(st.step, len(todo))
        if st.expire_after is not None:
            n = min(n, max(0, st.expire_after - b["request_counts"]["completed"]))
        for line in todo[:n]:
            [res] = await backend.generate([_request_from_body(line["body"])])
            st.answered[line["custom_id"]] += 1
            st.results[bid].append(json.dumps({
                "id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": line["custom_id"],
                "response": {"status_code": 200, "request_id": uuid.uuid4().hex[:12],
                             "body": _chat_body(line["body"]["model"], res)}, "error": None}))
            b["request_counts"]["completed"] += 1
        del todo[:n]
        expired = st.expire_after is not None and b["request_counts"]["completed"] >= st.expire_after and todo
        if not todo or expired:
            finish(bid, "expired" if expired else "completed")

    def finish(bid: str, status: str) -> None:
        b = st.batches[bid]
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        errors = [json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": line["custom_id"],
                              "response": None, "error": {"code": code, "message": f"batch {status}"}})
                  for line in st.pending[bid]]
        st.pending[bid] = []
        if st.results[bid]:
            b["output_file_id"] = new_file(("\n".join(st.results[bid]) + "\n").encode(), f"{bid}_output.jsonl",
                                           "batch_output")
        if errors:
            b["error_file_id"] = new_file(("\n".join(errors) + "\n").encode(), f"{bid}_error.jsonl", "batch_output")
            b["request_counts"]["failed"] = len(errors)
        b["status"] = status
        b[f"{status}_at"] = int(time.time())

    @app.get("/v1/batches/{bid}")
    async def retrieve(bid: str):
        if bid not in st.batches:
            return not_found("batch")
        async with lock:
            await advance(bid)
        return st.batches[bid]

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str | None = None):
        ids = sorted(st.batches, key=lambda k: -st.batches[k]["created_at"])
        if after in ids:
            ids = ids[ids.index(after) + 1:]
        page = ids[:limit]
        return {"object": "list", "data": [st.batches[i] for i in page],
                "first_id": page[0] if page else None, "last_id": page[-1] if page else None,
                "has_more": len(ids) > limit}

    @app.post("/v1/batches/{bid}/cancel")
    async def cancel(bid: str):
        if bid not in st.batches:
            return not_found("batch")
        b = st.batches[bid]
        if b["status"] in ("validating", "in_progress"):
            b["status"], b["cancelling_at"] = "cancelling", int(time.time())
        return b

    return app
