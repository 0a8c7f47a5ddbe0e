"""OpenAI Batch API for large judge jobs: half the price, a separate rate-limit pool.

A transport behind the call layer (``harness.batch_transport``): the pipeline's judge step runs as it
always does, and its cache misses go out as one batch instead of one request each. They are
written as JSONL with the call layer's cache key as ``custom_id``, uploaded
(``files.create(purpose="batch")``) and submitted (``batches.create``, endpoint
``/v1/chat/completions``, window ``24h``). When a batch ends, its output file is read and every
answer is put into the call cache under its ``custom_id`` (the entry an online call would
write), and the judge step parses and stores them; a rerun, online or batched, answers from the
cache. A batch that expired, was cancelled or failed some requests is followed by a new one
holding only the requests still missing from the cache. A parse failure's re-ask is a request
like any other: it goes out in the next batch.

What has been submitted (batch ids, file ids) is kept in a small JSON file next to the
cache, written before and after every remote step, so a process killed while
waiting resumes polling the same batch instead of submitting it again.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from harness.backends.base import GenRequest, GenResult, TokenLogprob
from harness.calls import CallCache
from harness.store import atomic_write_text

log = logging.getLogger("harness.batch")

ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# the Batch API's limit per input file
MAX_REQUESTS_PER_BATCH = 50_000


class BatchError(RuntimeError):
    pass


def request_body(model: str, req: GenRequest, extra_body: dict | None = None) -> dict:
    """The chat-completions body the ``openai`` backend would send for one request."""
    if req.messages is None:
        raise ValueError("batch API: only chat requests (messages) are supported; got a plain prompt")
    body: dict = {"model": model, "messages": req.messages, "max_tokens": req.max_tokens,
                  "temperature": req.temperature, "top_p": req.top_p}
    if req.stop:
        body["stop"] = req.stop
    if req.seed is not None:
        # one line per sample: the online path shares one seed over n choices, a batch
        # line cannot, so samples past the first get their own seed
        body["seed"] = req.seed + req.sample_index
    if req.logprobs or req.top_logprobs:
        body["logprobs"] = True
        if req.top_logprobs:
            body["top_logprobs"] = req.top_logprobs
    body.update(extra_body or {})
    if req.repetition_penalty:
        body["repetition_penalty"] = req.repetition_penalty
    if req.continue_final_message:
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


def result_from_body(body: dict) -> GenResult:
    """A chat.completion response body -> GenResult (raises ValueError when malformed)."""
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"no choices[0].message in the response body: {e!r}") from None
    lps = None
    content = (choice.get("logprobs") or {}).get("content")
    if content is not None:
        lps = [TokenLogprob(t["token"], t["logprob"], [(x["token"], x["logprob"]) for x in t.get("top_logprobs") or []])
               for t in content]
    usage = body.get("usage") or {}
    return GenResult(text=text, finish_reason=choice.get("finish_reason") or "", logprobs=lps,
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0))


@dataclass
class BatchReport:
    requests: int = 0  # distinct requests asked for
    cached_before: int = 0
    submitted_batches: int = 0
    submitted_requests: int = 0
    received: int = 0  # answers put into the cache
    failed: int = 0  # permanent per-request errors (left to the online path)
    missing: int = 0  # still not in the cache when this call returned
    pending: bool = False  # returned without waiting while a batch runs

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class BatchJob:
    """Submit, poll and collect batches for one model, with the cache as the ledger."""

    def __init__(self, cache: CallCache, model: str, model_id: str, state_path: str | Path,
                 base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", extra_body: dict | None = None,
                 poll_interval_s: float = 30.0, completion_window: str = "24h", max_rounds: int = 3,
                 max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH, prices: dict | None = None,
                 discount: float = 0.5, client=None):
        self.cache = cache
        self.model = model
        self.model_id = model_id
        self.state_path = Path(state_path)
        self.extra_body = extra_body
        self.poll_interval_s = poll_interval_s
        self.completion_window = completion_window
        self.max_rounds = max_rounds
        self.max_requests_per_batch = max_requests_per_batch
        self.price = (prices or {}).get(model_id) or (prices or {}).get(model)
        self.discount = discount
        if client is None:
            import openai

            key = os.environ.get(api_key_env) or ("EMPTY" if base_url else None)
            if key is None:
                raise ValueError(f"batch API: environment variable {api_key_env} is not set")
            client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=5)
        self.client = client

    # -- state
    def load_state(self) -> dict:
        if not self.state_path.exists():
            return {"model_id": self.model_id, "active": [], "history": [], "failed": {}}
        try:
            state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as e:
            raise BatchError(f"{self.state_path}: not valid JSON: {e}") from None
        if state.get("model_id") != self.model_id:
            raise BatchError(f"{self.state_path}: model_id: the state belongs to {state.get('model_id')!r}, "
                             f"not {self.model_id!r}")
        return state

    def save_state(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=2))

    # -- main loop
    def run(self, requests: Sequence[GenRequest], wait: bool = True,
            sleep: Callable[[float], None] = time.sleep) -> BatchReport:
        """Bring every request's answer into the cache (or return early with ``wait=False``)."""
        lines = {}
        for r in requests:
            lines.setdefault(r.cache_key(self.model_id), r)
        report = BatchReport(requests=len(lines))
        report.cached_before = len(self.cache.get_many(list(lines)))
        state = self.load_state()
        rounds = 0
        while True:
            if state["active"]:
                self._recover_unknown_batches(state)
                if not self._poll(state, report, wait, sleep):
                    report.pending = True
                    break
                continue
            have = self.cache.get_many(list(lines))
            missing = [k for k in lines if k not in have and k not in state["failed"]]
            if not missing or rounds >= self.max_rounds:
                break
            rounds += 1
            self._submit(state, [(k, lines[k]) for k in missing], report)
        have = self.cache.get_many(list(lines))
        report.missing = sum(k not in have for k in lines)
        report.failed = sum(k in state["failed"] for k in lines)
        return report

    def _submit(self, state: dict, items: list[tuple[str, GenRequest]], report: BatchReport) -> None:
        step = self.max_requests_per_batch
        for j in range(0, len(items), step):
            chunk = items[j:j + step]
            jsonl = "".join(json.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT,
                                        "body": request_body(self.model, r, self.extra_body)},
                                       ensure_ascii=False) + "\n" for k, r in chunk)
            f = self.client.files.create(file=("batch.jsonl", jsonl.encode("utf-8"), "application/jsonl"),
                                         purpose="batch")
            # recorded before the batch exists: a crash right after create is recovered
            # by finding the batch that uses this file, not by submitting again
            entry = {"input_file_id": f.id, "batch_id": None, "requests": len(chunk), "status": "uploaded",
                     "submitted_at": time.time()}
            state["active"].append(entry)
            self.save_state(state)
            b = self.client.batches.create(input_file_id=f.id, endpoint=ENDPOINT,
                                           completion_window=self.completion_window,
                                           metadata={"harness_model_id": self.model_id[:500]})
            entry.update(batch_id=b.id, status=b.status)
            self.save_state(state)
            report.submitted_batches += 1
            report.submitted_requests += len(chunk)
            log.info("batch %s submitted: %d requests", b.id, len(chunk))

    def _recover_unknown_batches(self, state: dict) -> None:
        lost = [e for e in state["active"] if e["batch_id"] is None]
        if not lost:
            return
        by_file = {}
        for b in self.client.batches.list(limit=100):
            by_file.setdefault(b.input_file_id, b.id)
        for e in lost:
            if e["input_file_id"] in by_file:
                e["batch_id"], e["status"] = by_file[e["input_file_id"]], "recovered"
            else:  # the upload happened, the batch was never created: the requests are still missing
                state["active"].remove(e)
        self.save_state(state)

    def _poll(self, state: dict, report: BatchReport, wait: bool, sleep) -> bool:
        """Poll active batches until all are terminal; False when ``wait`` is off and one is running."""
        while True:
            running = False
            for e in list(state["active"]):
                b = self.client.batches.retrieve(e["batch_id"])
                if b.status != e.get("status"):
                    e["status"] = b.status
                    self.save_state(state)
                if b.status not in TERMINAL:
                    running = True
                    continue
                self._collect(state, e, b, report)
                state["active"].remove(e)
                state["history"].append(e)
                self.save_state(state)
            if not state["active"]:
                return True
            if running and not wait:
                return False
            sleep(self.poll_interval_s)

    def _collect(self, state: dict, entry: dict, batch, report: BatchReport) -> None:
        received, retry, permanent = 0, 0, 0
        if batch.output_file_id:
            items = []
            for line in self._file_lines(batch.output_file_id):
                key, status, body, err = _parse_line(line, batch.output_file_id)
                if status == 200 and err is None:
                    try:
                        res = result_from_body(body)
                    except ValueError as e:
                        log.warning("batch %s: %s: %s", batch.id, key, e)
                        retry += 1
                        continue
                    if self.price:
                        res.cost = self.discount * (res.prompt_tokens * self.price.get("prompt", 0.0) +
                                                    res.completion_tokens * self.price.get("completion", 0.0)) / 1e6
                    items.append((key, self.model_id, res.to_dict()))
                elif _retryable(status):
                    retry += 1
                else:
                    state["failed"][key] = f"HTTP {status}: {str(err or body)[:200]}"
                    permanent += 1
            self.cache.put_many(items)
            received = len(items)
        if batch.error_file_id:
            for line in self._file_lines(batch.error_file_id):
                key, status, body, err = _parse_line(line, batch.error_file_id)
                code = (err or {}).get("code") if isinstance(err, dict) else None
                if code == "batch_expired" or code == "batch_cancelled" or _retryable(status):
                    retry += 1
                else:
                    state["failed"][key] = f"{code or status}: {str(err or body)[:200]}"
                    permanent += 1
        entry.update(status=batch.status, output_file_id=batch.output_file_id, error_file_id=batch.error_file_id,
                     received=received, to_retry=retry, failed=permanent)
        report.received += received
        log.info("batch %s %s: %d answers, %d to resubmit, %d failed", batch.id, batch.status, received, retry,
                 permanent)

    def _file_lines(self, file_id: str) -> list[str]:
        text = self.client.files.content(file_id).text
        return [ln for ln in text.splitlines() if ln.strip()]

    def cancel(self) -> None:
        """Ask the server to cancel the active batches (their finished part is still collected)."""
        state = self.load_state()
        for e in state["active"]:
            if e["batch_id"]:
                self.client.batches.cancel(e["batch_id"])


def _parse_line(line: str, file_id: str):
    try:
        d = json.loads(line)
        key = d["custom_id"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BatchError(f"batch file {file_id}: malformed line ({e!r}): {line[:200]}") from None
    resp = d.get("response") or {}
    return key, resp.get("status_code"), resp.get("body"), d.get("error")


def _retryable(status) -> bool:
    return status is None or status in (408, 409, 429) or status >= 500


def register(subparsers) -> None:
    """Add ``harness batch CONFIG --out DIR`` to the CLI's subparsers."""
    p = subparsers.add_parser("batch", help="judge a run through the OpenAI Batch API (resumable)")
    p.add_argument("config")
    p.add_argument("--out", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--poll-interval", type=float, default=30.0, help="seconds between status checks")
    p.add_argument("--no-wait", action="store_true", help="submit (or check) and return; rerun to collect")
    p.set_defaults(fn=_cmd_batch)


def _cmd_batch(args) -> int:
    from harness.config import apply_overrides, load_config, run_dir

    cfg = apply_overrides(load_config(args.config), args.limit, args.data_dir)
    out = run_dir(cfg, args.out)
    from harness.batch_transport import batch_judge

    report = asyncio.run(batch_judge(cfg, out, wait=not args.no_wait, poll_interval_s=args.poll_interval))
    print(json.dumps(report.to_dict()))
    if report.pending:
        print(f"batch still running; rerun the same command to collect it (state: {out / 'batch_state.json'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="harness")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
