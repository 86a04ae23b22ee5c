"""The server's FastAPI app (chapter 11): what ``make serve`` and ``python -m csm_lib.serve`` run (``cli.py``).

``create_app`` checks each request against the server's ``Limits`` (4xx with what was wrong) before any
work, admits it to a worker (``workers.Pool``: 429 over the server's or the client's quota), decodes its
context audio in a thread, waits for its first chunk and then streams the rest, or answers the whole
reply as WAV, PCM or JSON. ``guard.py`` stands in front of it: hosts, API keys, body size and time,
and cancelling the work of a client that left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from csm_lib import checkpoint
from csm_lib.generate import MIN_TEMPERATURE, REFERENCE_CODEC, REFERENCE_MODEL, trained_speakers
from csm_lib.serve.guard import Access, StreamCut, guard
from csm_lib.serve.schema import (
    APIError,
    ConversationInfo,
    ConversationRequest,
    GenerateJSON,
    GenerateRequest,
    Limits,
    Turn,
)
from csm_lib.serve.wav import check_sizes, decode_wavs, wav_header
from csm_lib.serve.workers import Job, KeptConversation, Pool, next_message

DECODE_THREADS = 2  # context audio is decoded in these threads, never in the event loop


# --- checks beyond the schema, before any work ---------------------------------------------------
def check_text(text: str, limits: Limits, where: str) -> None:
    if not text.strip():
        raise APIError(422, f"{where} is blank: a turn needs words")
    if len(text) > limits.max_text_chars:
        raise APIError(422, f"{where} has {len(text)} characters; this server takes at most {limits.max_text_chars}")


def check_turns(turns: list[Turn], limits: Limits, sample_rate: int, n_speakers: int) -> None:
    """A request's context turns, checked without decoding anything: their number, texts, speakers and the
    size of their audio (``wav.check_sizes``); 422 when over the limits."""
    if len(turns) > limits.max_context_turns:
        raise APIError(422, f"context has {len(turns)} turns; this server takes at most {limits.max_context_turns}")
    for i, t in enumerate(turns):
        check_text(t.text, limits, f"context[{i}].text")
        if t.speaker >= n_speakers:
            raise APIError(422, f"context[{i}].speaker {t.speaker}: the model knows speakers 0..{n_speakers - 1}")
    check_sizes([t.audio for t in turns], limits.max_context_audio_s, sample_rate)


def validation_message(errors: list[dict]) -> str:
    """Pydantic's errors as one sentence per field: ``body.text: String should have at least 1 character``."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:10])


# --- the application ---------------------------------------------------------------------------
def create_app(model: str | Path = REFERENCE_MODEL, codec: str | Path = REFERENCE_CODEC,
               limits: Limits | None = None, access: Access | None = None):
    """The FastAPI app behind its ``guard``; its worker processes start with the app (uvicorn's lifespan)
    and stop with it."""
    limits, access = limits or Limits(), access or Access()
    model_meta, codec_meta = checkpoint.load_meta(model), checkpoint.load_meta(codec)
    sample_rate = int(codec_meta["config"]["sample_rate"])
    n_speakers = trained_speakers(model_meta)
    pool = Pool(str(model), str(codec), limits)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        pool.stop()
        decoder.shutdown(cancel_futures=True)

    app = FastAPI(title="csm-workbook", version="0.1.0", lifespan=lifespan,
                  description="CSM text-to-speech in context, from the csm-workbook reference model (chapter 11). "
                              "Every path but /health and the docs needs 'Authorization: Bearer <key>' when the "
                              "server was started with API keys.")

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
        """Liveness, for anyone: ``ok`` (200) when every worker is ready, else ``degraded`` (503)."""
        ok = len(pool.ready()) == limits.workers
        return JSONResponse({"status": "ok" if ok else "degraded"}, 200 if ok else 503)

    @app.get("/status")
    async def status(request: Request) -> dict:
        """What the server runs and is doing (behind the API key: it names paths and process ids)."""
        return {"status": "ok" if len(pool.ready()) == limits.workers else "degraded", "workers": limits.workers,
                "workers_ready": len(pool.ready()), "pids": pool.pids(), "streams": len(pool.jobs),
                "conversations": len(pool.conversations), "sample_rate": sample_rate, "speakers": n_speakers,
                "model": str(model), "limits": asdict(limits), "client": request.state.client, **pool.stats}

    def request_dict(req: GenerateRequest) -> dict:
        """The request for the worker, checked (its context audio is decoded after admission)."""
        check_text(req.text, limits, "text")
        if req.speaker >= n_speakers:
            raise APIError(422, f"speaker {req.speaker}: the model was trained with speakers 0..{n_speakers - 1}")
        if 0 < req.temperature < MIN_TEMPERATURE:
            raise APIError(422, f"temperature {req.temperature:g}: use 0 (greedy) or at least {MIN_TEMPERATURE}")
        max_ms = req.max_audio_length_ms or min(10_000, limits.max_audio_length_ms)
        if max_ms > limits.max_audio_length_ms:
            raise APIError(422, f"max_audio_length_ms {req.max_audio_length_ms:g}: this server makes at most "
                                f"{limits.max_audio_length_ms:g} ms per reply")
        if req.stream and fmt_of(req, None) == "json":
            raise APIError(422, "response_format json cannot be streamed: stream wav or pcm")
        check_turns(req.context, limits, sample_rate, n_speakers)
        return {"text": req.text, "speaker": req.speaker, "context": [], "conversation_id": req.conversation_id,
                "temperature": req.temperature, "topk": req.topk, "seed": req.seed, "max_audio_length_ms": max_ms,
                "chunk_frames": req.chunk_frames or limits.chunk_frames}

    def fmt_of(req: GenerateRequest, accept: str | None) -> str:
        if req.response_format:
            return req.response_format
        return "json" if accept and "application/json" in accept and "audio/" not in accept else "wav"

    async def decode_turns(turns: list[Turn]) -> list[tuple[int, str, np.ndarray]]:
        """An admitted request's context audio, decoded in a thread (``wav.decode_wavs``): ``(speaker, text, audio)``
        per turn."""
        if not turns:
            return []
        audios = await asyncio.get_running_loop().run_in_executor(
            decoder, decode_wavs, [t.audio for t in turns], sample_rate, limits.max_context_audio_s)
        return [(t.speaker, t.text, a) for t, a in zip(turns, audios, strict=True)]

    def release(job: Job, conv: KeptConversation | None, last: tuple | None = None) -> None:
        """A job is over: its slot is freed, its conversation (if any) free again and up to date."""
        pool.finish(job)
        if conv is not None:
            conv.busy, conv.last_used = False, time.monotonic()
            if last is not None and last[0] == "done" and "turns" in last[2]:
                conv.turns, conv.positions = last[2]["turns"], last[2]["positions"]

    @app.post("/generate", response_model=GenerateJSON,
              responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}}, "description": "the reply's audio"},
                         401: {"description": "missing or wrong API key"},
                         404: {"description": "unknown conversation"}, 409: {"description": "conversation busy"},
                         413: {"description": "body too large"}, 422: {"description": "invalid input"},
                         429: {"description": "too many generations in progress"},
                         503: {"description": "out of time, or no worker ready"}})
    async def generate(req: GenerateRequest, request: Request):
        """Speak ``text`` as ``speaker`` after the ``context`` turns (or the kept conversation)."""
        received = time.monotonic()
        fmt = fmt_of(req, request.headers.get("accept"))
        r = request_dict(req)
        client = request.state.client
        conv = None if req.conversation_id is None else pool.conversation(req.conversation_id, client)
        if conv is not None and conv.busy:
            raise APIError(409, f"conversation {req.conversation_id} is already generating a turn; "
                                f"wait for it to finish")
        job = pool.admit(client, None if conv is None else conv.worker)
        deadline = received + limits.request_timeout_s
        try:
            if conv is not None:
                conv.busy = True
            r["context"] = await decode_turns(req.context)
            pool.send(job, ("generate", r))
            first = await next_message(job, deadline, limits.request_timeout_s)
            if first[0] == "error":
                raise APIError(first[2], first[3], {"Retry-After": "5"} if first[2] == 503 else None)
        except BaseException:
            release(job, conv)
            raise
        latency_ms = (time.monotonic() - received) * 1000

        async def chunks() -> AsyncIterator[tuple]:
            """The job's messages from the first on; the job is released however this ends."""
            msg = first
            try:
                while True:
                    yield msg
                    if msg[0] in ("done", "error"):
                        return
                    msg = await next_message(job, deadline, limits.request_timeout_s)
            finally:
                release(job, conv, msg)

        headers = {"X-Latency-Ms": f"{latency_ms:.1f}", "X-Sample-Rate": str(sample_rate)}
        if req.stream:
            async def body() -> AsyncIterator[bytes]:
                """The chunks as they come; a stream that cannot finish is aborted (``StreamCut``), not ended."""
                started = False
                try:
                    async for msg in chunks():
                        if msg[0] == "error":
                            raise StreamCut(f"{msg[2]}: {msg[3]}")
                        if msg[0] == "chunk":
                            yield (b"" if started or fmt == "pcm" else wav_header(sample_rate)) + msg[2]
                            started = True
                except APIError as e:  # out of time mid-stream
                    raise StreamCut(f"{e.status}: {e.message}") from None

            return StreamingResponse(body(), media_type="audio/wav" if fmt == "wav" else "audio/pcm", headers=headers)

        pcm, info = [], {}
        async for msg in chunks():
            if msg[0] == "chunk":
                pcm.append(msg[2])
            elif msg[0] == "error":
                raise APIError(msg[2], msg[3], {"Retry-After": "5"} if msg[2] == 503 else None)
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
    async def new_conversation(req: ConversationRequest, request: Request):
        """Start a conversation kept by the server, with its first turns (text and audio); only the API key
        that created it may use, read or delete it."""
        check_turns(req.context, limits, sample_rate, n_speakers)
        client = request.state.client
        cid = pool.new_conversation(client)
        c = pool.conversations[cid]
        if req.context:
            try:
                job, msg = pool.admit(client, c.worker), None
                c.busy = True
                try:
                    turns = await decode_turns(req.context)
                    pool.send(job, ("add", cid, turns))
                    msg = await next_message(job, time.monotonic() + limits.request_timeout_s,
                                             limits.request_timeout_s)
                finally:
                    release(job, c, msg)
                if msg[0] == "error":
                    raise APIError(msg[2], msg[3])
            except BaseException:
                if cid in pool.conversations:
                    pool.drop_conversation(cid)
                raise
        return info(cid, c)

    @app.get("/conversations/{cid}", response_model=ConversationInfo)
    async def get_conversation(cid: str, request: Request):
        return info(cid, pool.conversation(cid, request.state.client))

    @app.delete("/conversations/{cid}", status_code=204)
    async def delete_conversation(cid: str, request: Request):
        c = pool.conversation(cid, request.state.client)
        if c.busy:
            raise APIError(409, f"conversation {cid} is generating a turn; delete it when that ends")
        pool.drop_conversation(cid)
        return Response(status_code=204)

    return guard(app, limits, access, pool.stats)
