"""Judge throughput through the call layer against a loopback server with fixed latency.

Ideal: concurrency / latency requests per second (16 / 0.2 s = 80 req/s). Prints the
achieved share of the ideal, the harness's own CPU time per call (client process only:
the server runs in a separate process) with the default transport (light, for this
http:// URL) and with the openai SDK transport as the reference, and the time of a fully
cached rerun of a whole run versus its first run. ``benchmarks/harness_overhead.py``
measures the per-call overhead against an instant server.

    python benchmarks/judge_throughput.py [--requests 800] [--latency 0.2] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SERVER = """
import sys, uvicorn
from harness.serve import build_app, Faults
from harness.fake import ScriptedBackend, judge_like_answer
answer = judge_like_answer if sys.argv[3] == "rating" else (lambda r: "Feedback: adequate. [RESULT] 3")
uvicorn.run(build_app(ScriptedBackend(answer=answer), "judge", Faults(latency_s=float(sys.argv[2]))),
            host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def start_server(latency: float, answer: str = "rating"):
    import httpx

    from harness.serve import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(latency), answer], cwd=REPO)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def throughput(url: str, n: int, conc: int, latency: float, tmp: Path, transport: str) -> float:
    from harness.backends.base import GenRequest
    from harness.backends.openai_backend import OpenAIBackend
    from harness.calls import CallLayer, CallSettings

    backend = OpenAIBackend("judge", base_url=url, transport=transport)
    layer = CallLayer(tmp / f"cache-{transport}.sqlite", CallSettings(concurrency=conc))
    reqs = [GenRequest(messages=[{"role": "user", "content": f"judge answer {i} {transport}"}], max_tokens=64)
            for i in range(n)]

    async def go():
        # one loop for the warm-up and the timed calls: the connections opened stay in use
        await layer.run(backend, [GenRequest(messages=[{"role": "user", "content": f"warm {i} {transport}"}])
                                  for i in range(conc)])
        cpu0, t0 = time.process_time(), time.perf_counter()
        res = await layer.run(backend, reqs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        for client in backend._clients.values():
            await client.close()
        backend.close()
        return res, wall, cpu

    res, wall, cpu = asyncio.run(go())
    assert all(r.error is None for r in res)
    print(f"judge calls ({backend.transport} transport): {n} at concurrency {conc}, "
          f"server latency {latency * 1000:.0f} ms")
    if latency:
        ideal = conc / latency
        print(f"  throughput {n / wall:.1f} req/s; ideal {ideal:.1f} req/s; ratio {n / wall / ideal:.3f} "
              f"(target >= 0.85)")
    else:
        print(f"  throughput {n / wall:.1f} req/s")
    print(f"  harness CPU per call: {cpu / n * 1000:.2f} ms")
    return cpu / n


def rerun(url: str, tmp: Path, data_dir: str) -> None:
    import yaml

    from harness.cli import main

    cfg = {"name": "bench", "models": [{"name": "m", "backend": "scripted", "model": "w"}],
           "judge": {"name": "j", "backend": "openai", "model": "judge", "base_url": url},
           "tasks": [{"name": "mt_bench"}], "calls": {"concurrency": 16}, "data_dir": data_dir}
    p = tmp / "bench.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp / "run"
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                assert main(["run", str(p), "--out", str(out)]) == 0
            finally:
                sys.stdout = stdout
        times.append(time.perf_counter() - t0)
    print(f"whole MT-Bench run (80 questions, 160 judge calls): first {times[0]:.2f} s, "
          f"rerun {times[1]:.2f} s; ratio {times[1] / times[0]:.3f} (target < 0.05)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=800)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    data_dir = os.environ.get("HARNESS_DATA_DIR", str(REPO.parent / "shared" / "data"))
    proc, url = start_server(a.latency)
    try:
        with tempfile.TemporaryDirectory() as d:
            light = throughput(url, a.requests, a.concurrency, a.latency, Path(d), "auto")
            sdk = throughput(url, a.requests, a.concurrency, a.latency, Path(d), "sdk")
            print(f"  CPU per call, light / SDK transport: ratio {light / sdk:.3f}")
            rerun(url, Path(d), data_dir)
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
