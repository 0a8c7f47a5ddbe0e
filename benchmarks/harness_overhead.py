"""The harness's own cost per call, through the whole path a judge step takes.

Cache key and lookup, concurrency limit, backend call, parse, record write (a Judgment in the
run store), cache write: ``CallLayer.run_parsed`` with the pipeline's callback shape.

(a) an instant in-process backend (one request per call, like HTTP): CPU per call, target
    <= 0.25 ms; the reference is the bare backend calls with no harness around them;
(b) loopback HTTP at concurrency 64 against an instant OpenAI-compatible server in its own
    process (``benchmarks/instant_server.py``: its CPU is not the client's): requests/s and the
    client's CPU per call, with the light transport (the default for http:// URLs) and, as the
    reference in the same run, the openai SDK transport (``transport: sdk``, the path before).
    Target >= 2,000 requests/s (<= 0.5 ms per call).

Then a cProfile of (b) grouped by stage.

    python benchmarks/harness_overhead.py [--calls 20000] [--sdk-calls 3000] [--concurrency 64]
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.backends.base import Backend, GenRequest, GenResult  # noqa: E402
from harness.calls import CallLayer, CallSettings  # noqa: E402
from harness.records import Judgment  # noqa: E402
from harness.store import RunStore  # noqa: E402

ANSWER = "The answer is adequate. Rating: [[7]]"
RATING = re.compile(r"\[\[(\d+)\]\]")


class InstantBackend(Backend):
    """Answers at once, one request per call (``max_batch`` 1, as over HTTP)."""

    name = "instant"
    default_concurrency = 64
    local = True

    async def generate(self, requests):
        return [GenResult(text=ANSWER, finish_reason="stop", prompt_tokens=120, completion_tokens=9)
                for _ in requests]


class Parsed:
    def __init__(self, value):
        self.ok, self.value, self.reason = value is not None, value, None


def parse(res, i):
    m = RATING.search(res.text)
    return Parsed(int(m.group(1)) if m else None)


def judge_prompts(n: int, tag: str) -> list[list[dict]]:
    """Judge-sized prompts (about 2 KB), distinct per call so that nothing is a cache hit."""
    system = "You are a helpful assistant and an impartial judge. " * 4
    return [[{"role": "system", "content": system},
             {"role": "user", "content": f"[Question {tag}-{i}]\n" + "What is the answer? " * 30
              + "\n[Answer]\n" + "It is this one. " * 40 + "\nRate it from 1 to 10 as Rating: [[k]]."}]
            for i in range(n)]


async def whole_path(backend, n: int, conc: int, tmp: Path, tag: str) -> tuple[float, float]:
    """(wall s, client CPU s) of n judge calls through cache, limiter, backend, parse, record, cache."""
    store = RunStore(tmp / f"run-{tag}")
    layer = CallLayer(tmp / f"cache-{tag}.sqlite", CallSettings(concurrency=conc))
    await layer.run(backend, [GenRequest(messages=p) for p in judge_prompts(conc, tag + "warm")])  # connections
    prompts = judge_prompts(n, tag)
    reqs = [GenRequest(messages=p, max_tokens=64) for p in prompts]

    def on_final(i, res, parsed, attempts):
        store.put(Judgment(task="bench", instance_id=str(i), model="m", judge="j", judge_model="judge",
                           judge_config_hash="h", criterion="turn1", completion_key=f"bench/{i}/c/m/g/0",
                           prompt=prompts[i], raw=res.text, value=parsed.value, attempts=attempts,
                           parse_status="ok" if parsed and parsed.ok else "error"))

    cpu0, t0 = time.process_time(), time.perf_counter()
    final = await layer.run_parsed(backend, reqs, parse, on_final=on_final)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert all(r.error is None and p.ok for r, p, _ in final), [r.error for r, _, _ in final if r.error][:3]
    assert store.count("judgment", "ok") == n and len(layer.cache) == n + conc
    for client in getattr(backend, "_clients", {}).values():  # the SDK's, before its loop closes
        await client.close()
    backend.close()
    layer.close()
    store.close()
    return wall, cpu


async def bare_calls(backend, n: int, conc: int) -> tuple[float, float]:
    """The reference of (a): the same backend calls with nothing around them."""
    reqs = [GenRequest(messages=p) for p in judge_prompts(n, "bare")]
    sem = asyncio.Semaphore(conc)

    async def one(r):
        async with sem:
            return await backend.generate([r])

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return time.perf_counter() - t0, time.process_time() - cpu0


def start_server() -> tuple[subprocess.Popen, str]:
    from harness.serve import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "instant_server.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the instant server did not start")
    return proc, f"http://127.0.0.1:{port}/v1"


def cpu_of(pid: int) -> float:
    """CPU seconds a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def line(label: str, n: int, wall: float, cpu: float) -> str:
    return f"  {label:<34} {n / wall:8.0f} calls/s   CPU {cpu / n * 1000:.3f} ms/call"


# stage -> (functions whose cumulative time it is, functions nested in them counted elsewhere)
STAGES = [
    ("cache key (request hash)", [("base.py", "cache_key")], []),
    ("cache lookup", [("calls.py", "get_many")], []),
    ("retry loop, timeout, limiter", [("calls.py", "_call")], [("openai_backend.py", "generate")]),
    ("request build + response parse", [("openai_backend.py", "_light_generate")], [("http_light.py", "post")]),
    ("HTTP send (pool, write)", [("http_light.py", "post")], []),
    ("HTTP receive (read, parse head)", [("http_light.py", "data_received")], []),
    ("verdict parse", [("harness_overhead.py", "parse")], []),
    ("record build + write", [("harness_overhead.py", "on_final"), ("store.py", "grouped_writes")], []),
    ("cache write", [("calls.py", "put_many"), ("base.py", "to_dict")], []),
]


def profile_summary(prof: cProfile.Profile, n: int) -> None:
    st = pstats.Stats(prof).stats

    def cum(funcs) -> float:
        return sum(v[3] for (f, _, name), v in st.items() for suffix, fn in funcs if f.endswith(suffix) and name == fn)

    total = sum(v[2] for v in st.values())
    print(f"profile of (b), light transport: {total / n * 1000:.3f} ms per call under cProfile "
          f"(which slows every Python call; read the shares)")
    used = 0.0
    for stage, funcs, nested in STAGES:
        t = cum(funcs) - cum(nested)
        used += t
        print(f"  {stage:<34} {t / n * 1e6:7.1f} us/call  {100 * t / total:5.1f}%")
    rest = total - used
    print(f"  {'event loop, tasks, the rest':<34} {rest / n * 1e6:7.1f} us/call  {100 * rest / total:5.1f}%")
    print("  top functions by own time:")
    for (f, ln, name), v in sorted(st.items(), key=lambda kv: -kv[1][2])[:8]:
        print(f"    {v[2] / n * 1e6:6.1f} us/call  {Path(f).name}:{ln}({name})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--sdk-calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--profile-calls", type=int, default=5000)
    a = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    from harness.backends.openai_backend import OpenAIBackend

    n, conc = a.calls, a.concurrency
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"(a) in-process instant backend, {n} calls at concurrency {conc}")
        bw, bc = asyncio.run(bare_calls(InstantBackend("i"), n, conc))
        print(line("reference: bare backend calls", n, bw, bc))
        w, c = asyncio.run(whole_path(InstantBackend("i"), n, conc, tmp, "inproc"))
        print(line("whole path", n, w, c))
        print(f"  harness CPU per call {c / n * 1000:.3f} ms (target <= 0.25); over the bare calls "
              f"{(c - bc) / n * 1000:.3f} ms")

        proc, url = start_server()
        try:
            print(f"(b) loopback HTTP, instant server in its own process, concurrency {conc}")
            sw, sc = asyncio.run(whole_path(OpenAIBackend("judge", base_url=url, transport="sdk"),
                                            a.sdk_calls, conc, tmp, "sdk"))
            print(line("reference: openai SDK transport", a.sdk_calls, sw, sc))
            server0 = cpu_of(proc.pid)
            lw, lc = asyncio.run(whole_path(OpenAIBackend("judge", base_url=url), n, conc, tmp, "light"))
            server = cpu_of(proc.pid) - server0
            print(line("light transport (default)", n, lw, lc))
            print(f"  throughput {n / lw:.0f} req/s (target >= 2000); ratio to the SDK path "
                  f"{(n / lw) / (a.sdk_calls / sw):.1f}x; CPU per call {lc / n * 1000:.3f} ms (target <= 0.5), "
                  f"SDK path {sc / a.sdk_calls * 1000:.3f} ms")
            print(f"  the client's CPU alone would allow {n / lc:.0f} req/s; the server used {server / n * 1000:.3f} ms "
                  f"per call and {os.cpu_count()} cores are shared with whatever else runs (the wall rate is the "
                  f"slowest of these)")
            prof = cProfile.Profile()
            backend = OpenAIBackend("judge", base_url=url)

            async def profiled():
                prof.enable()
                try:
                    return await whole_path(backend, a.profile_calls, conc, tmp, "profile")
                finally:
                    prof.disable()

            asyncio.run(profiled())
            profile_summary(prof, a.profile_calls)
        finally:
            proc.terminate()


if __name__ == "__main__":
    main()
