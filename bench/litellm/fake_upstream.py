#!/usr/bin/env python3
"""Tiny fake OpenAI-compatible upstream (stdlib only) for checking the LiteLLM proxy.

POST /v1/chat/completions (or /chat/completions):
  stream=true  -> text/event-stream, CHUNKS `chat.completion.chunk` frames, one every
                  INTERVAL_MS, then `data: [DONE]`. Each delta's content is
                  "tok<i>@<unix_ns> " so a client can see whether the proxy keeps the
                  text verbatim and measure per-chunk delay.
  stream=false -> one `chat.completion` with the same text.
GET /v1/models -> a one-model list.

Usage: fake_upstream.py [--port 18080] [--chunks 64] [--interval-ms 20]
"""
import argparse
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None


def chunk_frame(cid, created, model, delta, finish=None):
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return ("data: " + json.dumps(obj, separators=(",", ":")) + "\n\n").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _write_chunk(self, data: bytes):
        # HTTP/1.1 chunked transfer encoding, flushed per SSE frame
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [
                {"id": "bench", "object": "model", "created": 0, "owned_by": "fake"}]})
        elif self.path.startswith("/health"):
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": "not found"}})
            return
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "bad json"}})
            return
        model = req.get("model", "bench")
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        chunks, interval = ARGS.chunks, ARGS.interval_ms / 1000.0
        if not req.get("stream"):
            text = "".join(f"tok{i}@{time.time_ns()} " for i in range(chunks))
            self._send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": chunks,
                          "total_tokens": chunks + 1}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._write_chunk(chunk_frame(cid, created, model, {"role": "assistant", "content": ""}))
            for i in range(chunks):
                time.sleep(interval)
                self._write_chunk(chunk_frame(cid, created, model,
                                              {"content": f"tok{i}@{time.time_ns()} "}))
            self._write_chunk(chunk_frame(cid, created, model, {}, finish="stop"))
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--interval-ms", type=float, default=20.0)
    ARGS = p.parse_args()
    ThreadingHTTPServer.request_queue_size = 1024  # stdlib default backlog is 5
    srv = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    srv.daemon_threads = True
    print(f"fake upstream on http://{ARGS.host}:{ARGS.port}/v1", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
