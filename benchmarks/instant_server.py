"""An instant OpenAI-compatible chat endpoint for overhead benchmarks: raw asyncio, keep-alive
HTTP/1.1, one canned verdict per request (chat completions only, ``n`` honoured).

It must cost the client nothing it would not pay against vLLM, and cost the machine little
(benchmarks run it in its own process so its CPU is not billed to the client):

    python benchmarks/instant_server.py PORT [WORKERS]

prints ``ready`` once listening. WORKERS > 1 forks processes sharing the port (SO_REUSEPORT).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

ANSWER = "The answer is adequate. Rating: [[7]]"


def _response(n: int) -> bytes:
    body = json.dumps({
        "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": "judge",
        "choices": [{"index": i, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None,
                     "finish_reason": "stop"} for i in range(n)],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9 * n, "total_tokens": 12 + 9 * n}}).encode()
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: keep-alive\r\n\r\n").encode()
    return head + body


_CANNED = {n: _response(n) for n in range(1, 9)}


class Instant(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            n = int(json.loads(body).get("n") or 1) if b'"n"' in body else 1
            self.t.write(_CANNED.get(n) or _response(n))


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Instant, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    socks = []
    for _ in range(workers):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1024)
        socks.append(s)
    print("ready", flush=True)
    for s in socks[1:]:
        if os.fork() == 0:
            asyncio.run(serve(s))
            return
    asyncio.run(serve(socks[0]))


if __name__ == "__main__":
    main()
