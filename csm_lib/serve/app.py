"""The server's FastAPI app and its command line (chapter 11): ``make serve``, ``python -m csm_lib.serve``.

``create_app`` checks each request against the server's ``Limits`` (4xx with what was wrong), admits
it to a worker (``workers.Pool``), waits for its first chunk and then streams the rest, or answers the
whole reply as WAV, PCM or JSON. ``Server`` runs the command in a subprocess on a free local port
(the tests, ``bench/serve.py`` and chapter 11 talk to it as any client would).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from csm_lib import checkpoint
from csm_lib.generate import MIN_TEMPERATURE, REFERENCE_CODEC, REFERENCE_MODEL, trained_speakers
from csm_lib.outputs import REPO
from csm_lib.serve.schema import (
    APIError,
    ConversationInfo,
    ConversationRequest,
    GenerateJSON,
    GenerateRequest,
    Limits,
    Turn,
)
from csm_lib.serve.wav import decode_wav, wav_header
from csm_lib.serve.workers import KeptConversation, Pool, next_message


# --- checks beyond the schema ------------------------------------------------------------------
def context_turns(turns: list[Turn], limits: Limits, sample_rate: int) -> list[tuple[int, str, np.ndarray]]:
    """Decode and check a request's context turns -> ``(speaker, text, audio)``; 422 when over the limits."""
    if len(turns) > limits.max_context_turns:
        raise APIError(422, f"context has {len(turns)} turns; this server takes at most {limits.max_context_turns}")
    out, seconds = [], 0.0
    for i, t in enumerate(turns):
        check_text(t.text, limits, f"context[{i}].text")
        audio = decode_wav(t.audio, sample_rate, f"context[{i}].audio")
        seconds += len(audio) / sample_rate
        if seconds > limits.max_context_audio_s:
            raise APIError(422, f"context audio lasts more than {limits.max_context_audio_s:g} s in all; "
                                f"this server takes at most that (send fewer or shorter turns)")
        out.append((t.speaker, t.text, audio))
    return out


def check_text(text: str, limits: Limits, where: str) -> None:
    if not text.strip():
        raise APIError(422, f"{where} is blank: a turn needs words")
    if len(text) > limits.max_text_chars:
        raise APIError(422, f"{where} has {len(text)} characters; this server takes at most {limits.max_text_chars}")


# --- the application ---------------------------------------------------------------------------
def body_limit(app, max_bytes: int):
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before anything reads it."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = JSONResponse({"detail": f"request body over this server's limit of {max_bytes} bytes"}, 413)
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:  # read it all (bounded), then replay it to the app
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > max_bytes:
                return await too_big(scope, receive, send)
            more = msg.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await app(scope, replay, send)

    return middleware


def validation_message(errors: list[dict]) -> str:
    """Pydantic's errors as one sentence per field: ``body.text: String should have at least 1 character``."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:10])


def create_app(model: str | Path = REFERENCE_MODEL, codec: str | Path = REFERENCE_CODEC,
               limits: Limits | None = None) -> FastAPI:
    """The FastAPI app; its worker processes start with the app (uvicorn's lifespan) and stop with it."""
    limits = limits or Limits()
    model_meta, codec_meta = checkpoint.load_meta(model), checkpoint.load_meta(codec)
    sample_rate = int(codec_meta["config"]["sample_rate"])
    n_speakers = trained_speakers(model_meta)
    pool = Pool(str(model), str(codec), limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(None, pool.start)
        yield
        pool.stop()

    app = FastAPI(title="csm-workbook", version="0.1.0", lifespan=lifespan,
                  description="CSM text-to-speech in context, from the csm-workbook reference model (chapter 11).")
    app.state.pool, app.state.limits = pool, limits

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse({"detail": e.message}, e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return JSONResponse({"detail": validation_message(e.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"detail": e.detail}, e.status_code, headers=getattr(e, "headers", None))

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = pool.alive()
        body = {"status": "ok" if all(alive) else "worker died", "workers": len(alive), "workers_alive": sum(alive),
                "streams": len(pool.jobs), "max_streams": limits.max_streams,
                "conversations": len(pool.conversations), "sample_rate": sample_rate,
                "speakers": n_speakers, "model": str(model), "limits": asdict(limits), "pids": pool.pids()}
        return JSONResponse(body, 200 if all(alive) else 503)

    def request_dict(req: GenerateRequest) -> dict:
        check_text(req.text, limits, "text")
        if req.speaker >= n_speakers:
            raise APIError(422, f"speaker {req.speaker}: the model was trained with speakers 0..{n_speakers - 1}")
        if 0 < req.temperature < MIN_TEMPERATURE:
            raise APIError(422, f"temperature {req.temperature:g}: use 0 (greedy) or at least {MIN_TEMPERATURE}")
        max_ms = req.max_audio_length_ms or min(10_000, limits.max_audio_length_ms)
        if max_ms > limits.max_audio_length_ms:
            raise APIError(422, f"max_audio_length_ms {req.max_audio_length_ms:g}: this server makes at most "
                                f"{limits.max_audio_length_ms:g} ms per reply")
        if any(t.speaker >= n_speakers for t in req.context):
            raise APIError(422, f"a context turn's speaker is not one the model knows (0..{n_speakers - 1})")
        if req.stream and fmt_of(req, None) == "json":
            raise APIError(422, "response_format json cannot be streamed: stream wav or pcm")
        return {"text": req.text, "speaker": req.speaker, "context": context_turns(req.context, limits, sample_rate),
                "conversation_id": req.conversation_id, "temperature": req.temperature, "topk": req.topk,
                "seed": req.seed, "max_audio_length_ms": max_ms,
                "chunk_frames": req.chunk_frames or limits.chunk_frames}

    def fmt_of(req: GenerateRequest, accept: str | None) -> str:
        if req.response_format:
            return req.response_format
        return "json" if accept and "application/json" in accept and "audio/" not in accept else "wav"

    @app.post("/generate", response_model=GenerateJSON,
              responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}}, "description": "the reply's audio"},
                         404: {"description": "unknown conversation"}, 409: {"description": "conversation busy"},
                         413: {"description": "body too large"}, 422: {"description": "invalid input"},
                         429: {"description": "too many generations in progress"},
                         503: {"description": "out of time"}})
    async def generate(req: GenerateRequest, request: Request):
        """Speak ``text`` as ``speaker`` after the ``context`` turns (or the kept conversation)."""
        received = time.monotonic()
        fmt = fmt_of(req, request.headers.get("accept"))
        r = request_dict(req)
        conv = None
        if req.conversation_id is not None:
            conv = pool.conversation(req.conversation_id)
            if conv.busy:
                raise APIError(409, f"conversation {req.conversation_id} is already generating a turn; "
                                    f"wait for it to finish")
        job = pool.submit(("generate", r), None if conv is None else conv.worker)
        if conv is not None:
            conv.busy = True
        deadline = received + limits.request_timeout_s
        try:
            first = await next_message(job, deadline, limits.request_timeout_s)
            if first[0] == "error":
                raise APIError(first[2], first[3])
        except BaseException:
            pool.finish(job)
            if conv is not None:
                conv.busy, conv.last_used = False, time.monotonic()
            raise
        latency_ms = (time.monotonic() - received) * 1000

        async def chunks() -> AsyncIterator[tuple]:
            """The job's messages from the first on; the job is finished however this ends."""
            msg = first
            try:
                while True:
                    yield msg
                    if msg[0] in ("done", "error"):
                        return
                    msg = await next_message(job, deadline, limits.request_timeout_s)
            finally:
                pool.finish(job)
                if conv is not None:
                    conv.busy, conv.last_used = False, time.monotonic()
                    if msg[0] == "done" and "turns" in msg[2]:
                        conv.turns, conv.positions = msg[2]["turns"], msg[2]["positions"]

        headers = {"X-Latency-Ms": f"{latency_ms:.1f}", "X-Sample-Rate": str(sample_rate)}
        if req.stream:
            async def body() -> AsyncIterator[bytes]:
                started = False
                with contextlib.suppress(APIError):  # out of time mid-stream: the stream just ends
                    async for msg in chunks():
                        if msg[0] == "chunk":
                            yield (b"" if started or fmt == "pcm" else wav_header(sample_rate)) + msg[2]
                            started = True

            return StreamingResponse(body(), media_type="audio/wav" if fmt == "wav" else "audio/pcm", headers=headers)

        pcm, info = [], {}
        async for msg in chunks():
            if msg[0] == "chunk":
                pcm.append(msg[2])
            elif msg[0] == "error":
                raise APIError(msg[2], msg[3])
            else:
                info = msg[2]
        total_ms = (time.monotonic() - received) * 1000
        data = b"".join(pcm)
        duration_ms = len(data) / 2 / sample_rate * 1000
        headers |= {"X-Total-Ms": f"{total_ms:.1f}", "X-Duration-Ms": f"{duration_ms:.1f}",
                    "X-Frames": str(info.get("frames", 0))}
        if fmt == "pcm":
            return Response(data, media_type="audio/pcm", headers=headers)
        wav = wav_header(sample_rate, len(data)) + data
        if fmt == "wav":
            return Response(wav, media_type="audio/wav", headers=headers)
        return GenerateJSON(text=req.text, speaker=req.speaker, audio=base64.b64encode(wav).decode(),
                            sample_rate=sample_rate, duration_ms=round(duration_ms, 1), latency_ms=round(latency_ms, 1),
                            total_ms=round(total_ms, 1), frames=info.get("frames", 0),
                            ended_by_model=info.get("ended_by_model", False), conversation_id=req.conversation_id,
                            warnings=info.get("warnings", []))

    def info(cid: str, c: KeptConversation) -> ConversationInfo:
        return ConversationInfo(id=cid, turns=c.turns, positions=c.positions,
                                idle_s=round(time.monotonic() - c.last_used, 1), busy=c.busy)

    @app.post("/conversations", response_model=ConversationInfo, status_code=201)
    async def new_conversation(req: ConversationRequest):
        """Start a conversation kept by the server, with its first turns (text and audio)."""
        turns = context_turns(req.context, limits, sample_rate)
        if any(s >= n_speakers for s, _, _ in turns):
            raise APIError(422, f"a context turn's speaker is not one the model knows (0..{n_speakers - 1})")
        cid = pool.new_conversation()
        c = pool.conversations[cid]
        if turns:
            job = pool.submit(("add", cid, turns), c.worker)
            c.busy = True
            try:
                msg = await next_message(job, time.monotonic() + limits.request_timeout_s, limits.request_timeout_s)
            finally:
                pool.finish(job)
                c.busy, c.last_used = False, time.monotonic()
            if msg[0] == "error":
                pool.drop_conversation(cid)
                raise APIError(msg[2], msg[3])
            c.turns, c.positions = msg[2]["turns"], msg[2]["positions"]
        return info(cid, c)

    @app.get("/conversations/{cid}", response_model=ConversationInfo)
    async def get_conversation(cid: str):
        return info(cid, pool.conversation(cid))

    @app.delete("/conversations/{cid}", status_code=204)
    async def delete_conversation(cid: str):
        c = pool.conversation(cid)
        if c.busy:
            raise APIError(409, f"conversation {cid} is generating a turn; delete it when that ends")
        pool.drop_conversation(cid)
        return Response(status_code=204)

    return body_limit(app, limits.max_body_bytes) if limits.max_body_bytes else app


# --- running it ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m csm_lib.serve",
                                description="Serve the CSM over HTTP (FastAPI + uvicorn).")
    p.add_argument("--model", default=str(REFERENCE_MODEL))
    p.add_argument("--codec", default=str(REFERENCE_CODEC))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    for name, default in asdict(Limits()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    a = parse_args(argv)
    limits = Limits(**{k: getattr(a, k) for k in asdict(Limits())})
    app = create_app(a.model, a.codec, limits)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m csm_lib.serve`` in a subprocess on a free port of 127.0.0.1 (tests, benchmarks, chapter 11).

    >>> with Server(workers=1, max_streams=2) as server:
    ...     httpx.post(server.url + "/generate", json={"text": "hello"})
    """

    def __init__(self, log: str | Path | None = None, **limits):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in limits.items()]
        self.log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "csm_lib.serve", f"--port={self.port}", *flags],
                                     cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)  # no server left running when the notebook's kernel or the tests end

    def wait(self, timeout: float = 180) -> Server:
        """Wait for ``/health`` to answer 200 (the workers have loaded the model)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"the server did not answer /health within {timeout} s")

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers together, MB (Linux /proc)."""
        pids = [self.proc.pid, *self.health()["pids"]]
        total = 0
        for pid in pids:
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return total / 1024

    def cpu_seconds(self) -> dict:
        """CPU time (user + system, s) used so far by the server's main process and by its workers together."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pid: int) -> float:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

        return {"main": cpu(self.proc.pid), "workers": sum(cpu(p) for p in self.health()["pids"])}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self) -> Server:
        return self.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
