"""Serving CSM over HTTP (chapter 11): a FastAPI ``/generate`` that streams, validates and holds load.

    make serve                     # python -m csm_lib.serve: the reference model on 127.0.0.1:8000
    curl -s localhost:8000/generate -H 'content-type: application/json' \\
         -d '{"text": "the rain stopped at noon", "speaker": 0, "seed": 1}' -o reply.wav

How a request flows (one picture to keep in mind)::

    HTTP client -> uvicorn (main process, asyncio)         worker processes (torch, 1 thread each)
                   validate (pydantic + Limits) -- 4xx    ┌> worker 0: round-robin over its streams,
                   decode context WAVs         -- 4xx    ─┤  one frame per stream per turn, a causal
                   admit (<= max_streams)      -- 429     └> worker 1: codec decoder per stream
                   await the first chunk (errors -> 4xx), then stream PCM chunks back as they come

Why processes, and why round-robin: on a small CPU a frame of the reference model is dispatch-bound
(hundreds of small ops, each holding Python's GIL while it is launched), so threads in one process
do not add up (chapter 11 measures it) and one worker per core does. Inside a worker, streams take
turns frame by frame: a new request is admitted at the next frame boundary and its first chunk
(prompt, prefill, one frame, one codec step) goes out before the older streams continue. No state
is shared between streams: each has its own KV cache and its own ``StreamingDecoder``; the audio
decoder's positions live only inside one frame (``inference.GrowingCache``).

The first chunk is one frame (80 ms of audio, so the first bytes leave as early as possible); the
later ones ``chunk_frames`` frames (4 by default): the codec's causal decoder costs about as much
for 4 frames as for 1 (chapter 11). A streamed reply and a non-streamed one with the same seed are
the same samples: both are the concatenation of the same chunks.

Conversations kept server-side (``POST /conversations``) live in one worker, pinned there: the
backbone's KV cache of every turn (``generate.Conversation``), so a new turn prefills only its
own text. They are capped in number (``max_conversations``), size (the model's window: the oldest
turns are dropped) and idle time (``conversation_idle_s``).

Every bad input is answered 4xx with a message saying what was wrong and what is expected: 413
(body too large), 422 (invalid fields, undecodable or implausible audio, a turn that does not fit
the model's window), 404 (unknown conversation), 409 (a conversation already generating), 429
(``max_streams`` generations in progress, or ``max_conversations`` kept; ``Retry-After``), 503
only when the server itself is out of time (``request_timeout_s``) or a worker died.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import binascii
import contextlib
import io
import multiprocessing as mp
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from csm_lib import checkpoint
from csm_lib.audio import wav_bytes
from csm_lib.generate import MIN_TEMPERATURE, REFERENCE_CODEC, REFERENCE_MODEL, REFERENCE_TEMPERATURE, trained_speakers
from csm_lib.outputs import REPO
from csm_lib.text import N_SPEAKERS

# ceilings written into the OpenAPI schema; the server's Limits may be stricter
TEXT_CEILING = 2_000  # characters of one turn's text
TURNS_CEILING = 32  # context turns in one request
AUDIO_MS_CEILING = 60_000  # max_audio_length_ms
SEED_CEILING = 2**63 - 1


@dataclass
class Limits:
    """What one server accepts. Each limit is a CLI flag of ``python -m csm_lib.serve``."""

    max_text_chars: int = 400  # one turn's text
    max_context_turns: int = 8  # per request
    max_context_audio_s: float = 60.0  # all context audio of a request together
    max_audio_length_ms: float = 20_000  # the longest reply one may ask for
    max_body_bytes: int = 16 * 2**20  # the HTTP body (base64 WAVs are most of it)
    max_streams: int = 8  # generations in progress at once; one more gets 429
    max_conversations: int = 32  # kept server-side at once; one more gets 429
    conversation_idle_s: float = 600.0  # a conversation unused this long is dropped
    request_timeout_s: float = 60.0  # from admission to the last chunk
    workers: int = 2  # worker processes (one per core)
    threads: int = 1  # torch threads per worker
    chunk_frames: int = 4  # default frames per chunk after the first
    batch: int = 1  # 1: draw the frames of a worker's streams together (continuous batching); 0: one by one


# --- the API: what a request may contain -------------------------------------------------------
class Turn(BaseModel):
    """An earlier turn of the conversation: who spoke, what they said, their audio (base64 WAV)."""

    model_config = ConfigDict(extra="forbid")
    speaker: int = Field(ge=0, le=N_SPEAKERS - 1)
    text: str = Field(min_length=1, max_length=TEXT_CEILING)
    audio: str = Field(min_length=1, description="base64 of a mono WAV file at the model's sample rate (16 kHz)")


class GenerateRequest(BaseModel):
    """``POST /generate``: the next turn's text and speaker, and how to say it."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=TEXT_CEILING, description="what the speaker says")
    speaker: int = Field(0, ge=0, le=N_SPEAKERS - 1, description="speaker id (the model knows 0..n-1)")
    context: list[Turn] = Field(default_factory=list, max_length=TURNS_CEILING,
                                description="earlier turns, oldest first (added to the conversation if one is given)")
    conversation_id: str | None = Field(None, min_length=1, max_length=64,
                                        description="a conversation kept by the server (POST /conversations)")
    temperature: float = Field(REFERENCE_TEMPERATURE, ge=0, le=10, allow_inf_nan=False,
                               description="0: greedy; the default is the one chosen for the reference model")
    topk: int = Field(50, ge=1, le=4096)
    seed: int | None = Field(None, ge=0, le=SEED_CEILING, description="same seed, same audio")
    max_audio_length_ms: float | None = Field(None, ge=80, le=AUDIO_MS_CEILING, allow_inf_nan=False,
                                              description="default: 10 s, or the server's limit if lower")
    stream: bool = Field(False, description="chunked audio as it is generated (wav or pcm)")
    response_format: Literal["wav", "pcm", "json"] | None = Field(
        None, description="wav, pcm (16-bit little-endian mono) or json (base64 WAV and timings); "
                          "default: json if the Accept header asks for it, else wav")
    chunk_frames: int | None = Field(None, ge=1, le=25, description="80 ms frames per chunk after the first")


class ConversationRequest(BaseModel):
    """``POST /conversations``: a new kept conversation, optionally with its first turns."""

    model_config = ConfigDict(extra="forbid")
    context: list[Turn] = Field(default_factory=list, max_length=TURNS_CEILING)


class GenerateJSON(BaseModel):
    """The JSON answer of ``/generate``: the seed report's ``text, voice, latency_ms`` and more."""

    text: str
    speaker: int
    audio: str = Field(description="base64 WAV, 16-bit mono")
    sample_rate: int
    duration_ms: float
    latency_ms: float = Field(description="request received -> first audio chunk ready")
    total_ms: float = Field(description="request received -> last audio chunk ready")
    frames: int
    ended_by_model: bool = Field(description="the model ended the turn (else max_audio_length_ms did)")
    conversation_id: str | None = None
    warnings: list[str] = Field(default_factory=list)


class ConversationInfo(BaseModel):
    id: str
    turns: int
    positions: int = Field(description="backbone positions in the kept cache")
    idle_s: float
    busy: bool


class APIError(Exception):
    """An answer other than 200: ``status`` and a message that says what was wrong."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# --- audio in and out ------------------------------------------------------------------------
def pcm16(audio: np.ndarray) -> bytes:
    """Float samples ``(T,)`` in [-1, 1] -> 16-bit little-endian PCM bytes (clipped)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, n_bytes: int | None = None) -> bytes:
    """A 44-byte WAV header for 16-bit mono PCM; ``n_bytes=None`` (a stream of unknown length) writes
    the largest sizes, as streaming WAV servers do."""
    data = 0xFFFFFFFF - 36 if n_bytes is None else n_bytes
    return (b"RIFF" + (36 + data).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + sample_rate.to_bytes(4, "little")
            + (sample_rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + data.to_bytes(4, "little"))


def encode_wav(audio: np.ndarray, sample_rate: int) -> str:
    """Float samples ``(T,)`` -> base64 of a 16-bit WAV file (for a request's ``context``)."""
    return base64.b64encode(wav_bytes(audio, sample_rate)).decode()


def decode_wav(b64: str, sample_rate: int, where: str) -> np.ndarray:
    """Base64 of a WAV file -> float32 samples ``(T,)``; a 422 ``APIError`` saying what is wrong otherwise."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(422, f"{where}: not valid base64 ({e}); expected base64 of a WAV file") from None
    try:
        audio, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError... on garbage
        raise APIError(422, f"{where}: not a readable WAV file ({type(e).__name__}: {str(e)[:120]}); "
                            f"expected a mono WAV at {sample_rate} Hz, base64-encoded") from None
    if sr != sample_rate:
        raise APIError(422, f"{where}: sample rate {sr} Hz; the model's codec expects {sample_rate} Hz "
                            f"(resample it first)")
    if audio.shape[1] != 1:
        raise APIError(422, f"{where}: {audio.shape[1]} channels; expected mono (1 channel)")
    audio = audio[:, 0]
    if not np.isfinite(audio).all():
        raise APIError(422, f"{where}: contains NaN or infinite samples; expected finite samples in [-1, 1]")
    return audio


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


# --- the worker process: the model, its streams and its conversations ---------------------------
@dataclass
class Stream:
    """One reply being generated in a worker: its own KV cache, sampler and codec decoder."""

    job: str
    h: object  # (1, D) backbone state the next frame is drawn from
    cache: object  # its LayerCache (a kept conversation's own cache, or one made for this request)
    settings: tuple  # (temperature, topk, torch.Generator or None)
    max_frames: int
    decoder: object  # its codec StreamingDecoder
    chunk_frames: int
    conversation: object = None  # the generate.Conversation it belongs to, if any
    turn: dict | None = None  # Conversation.start_turn's bookkeeping
    last: object = None  # the last frame drawn, not fed yet (1, K)
    generated: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # frames not decoded yet
    sent_first: bool = False
    warnings: list = field(default_factory=list)


def worker_main(index: int, model: str, codec: str, threads: int, inbox: mp.Queue, outbox: mp.Queue,
                batch: bool = True) -> None:
    """A worker process: loads the model, then serves its ``inbox`` until told to stop.

    Each round, every stream's last frame is fed to its own backbone cache (one at a time: their
    contexts differ in length), then the next frame of **all** streams is drawn at once: the audio
    decoder runs on the B rows together (``FastCSM.frame_each``), each row sampled with its own
    seed, temperature and top-k. This is continuous batching: a new request joins at the next round,
    after its prompt is prefilled and its first frame drawn and decoded on its own (the first chunk
    is urgent); a finished one leaves. Then each stream's new frames go through its own codec decoder.

    Messages in: ``("generate", job, request dict)``, ``("add", job, conversation, turns)``,
    ``("cancel", job)``, ``("drop", conversation)``, ``("stop",)``. Out: ``("chunk", job, pcm bytes)``,
    ``("done", job, info)``, ``("error", job, status, message)``.
    """
    import torch

    from csm_lib import frames as Fr
    from csm_lib.codec import StreamingDecoder
    from csm_lib.generate import Conversation, Segment, load_generator

    torch.set_num_threads(threads)
    gen = load_generator(model, codec)
    fast = gen.fast
    streams: list[Stream] = []
    conversations: dict[str, Conversation] = {}
    outbox.put(("ready", index, os.getpid()))

    def segments(turns) -> list[Segment]:
        return [Segment(s, t, torch.from_numpy(a), gen.sample_rate) for s, t, a in turns]

    def start(job: str, r: dict) -> Stream:
        """Prompt and prefill: the state to draw the first frame from (ValueError: the input does not fit)."""
        gen._check_sampling(r["max_audio_length_ms"], r["temperature"], r["topk"])
        max_frames = int(r["max_audio_length_ms"] // gen.frame_ms)
        conv, turn = None, None
        if r["conversation_id"] is None:
            frames, mask = gen.prompt(r["text"], r["speaker"], segments(r["context"]), max_frames)
            cache = fast.new_cache(1, frames.shape[1] + max_frames)
            h = fast.prefill(frames, mask, cache)
        else:
            conv = conversations.setdefault(r["conversation_id"], Conversation(gen))
            for seg in segments(r["context"]):  # context turns join the kept conversation first
                conv.add(seg)
            h, turn = conv.start_turn(r["text"], r["speaker"], max_frames)
            cache = conv.cache
        seed = r["seed"]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return Stream(job, h, cache, (r["temperature"], r["topk"], generator), max_frames,
                      StreamingDecoder(gen.codec, batch_size=1), r["chunk_frames"], conv, turn)

    def send_chunk(s: Stream, final: bool = False) -> None:
        parts = []
        if s.pending:
            parts.append(s.decoder.push(torch.stack(s.pending, dim=-1))[0])  # (1, K, n) -> (n * spf,)
            s.pending = []
        if final and (parts or s.sent_first):
            parts.append(s.decoder.flush()[0])
        if parts:
            outbox.put(("chunk", s.job, pcm16(torch.cat(parts).numpy())))
            s.sent_first = True

    def finish(s: Stream, ended_by_model: bool) -> None:
        send_chunk(s, final=True)
        info = {"frames": len(s.generated), "ended_by_model": ended_by_model, "warnings": s.warnings}
        if s.conversation is not None:
            s.conversation.end_turn(s.turn, s.generated)
            info |= {"turns": len(s.conversation.turns), "positions": s.conversation.positions}
        outbox.put(("done", s.job, info))

    def draw(batch: list[Stream]) -> list[Stream]:
        """The next frame of every stream in ``batch`` at once -> the streams that go on."""
        codes = fast.frame_each(torch.cat([s.h for s in batch]), [s.settings for s in batch])  # (B, K)
        going = []
        for i, s in enumerate(batch):
            c = codes[i:i + 1]
            if Fr.is_end_of_speech(c).item():  # the model ended the turn (not yielded, not fed)
                finish(s, True)
                continue
            s.generated.append(c)
            s.pending.append(c.cpu())
            if len(s.pending) >= (s.chunk_frames if s.sent_first else 1):
                send_chunk(s)
            if len(s.generated) == s.max_frames:  # the last frame is not fed: nothing follows it
                finish(s, False)
                continue
            s.last = c
            going.append(s)
        return going

    def fail(jobs: list[str], e: Exception) -> None:
        status = 422 if isinstance(e, ValueError) else 500
        if status == 500:
            traceback.print_exc()
        for job in jobs:
            outbox.put(("error", job, status, str(e) if status == 422 else f"{type(e).__name__}: {e}"))

    def handle(msg: tuple) -> bool:
        kind = msg[0]
        if kind == "stop":
            return False
        if kind == "generate":
            _, job, r = msg
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    s = start(job, r)
                s.warnings = [str(w.message) for w in caught]
                streams.extend(draw([s]))  # its first frame and chunk now, alone
            except Exception as e:
                fail([job], e)
        elif kind == "add":
            _, job, conv_id, turns = msg
            conv = conversations.setdefault(conv_id, Conversation(gen))
            try:
                for seg in segments(turns):
                    conv.add(seg)
                outbox.put(("done", job, {"turns": len(conv.turns), "positions": conv.positions}))
            except Exception as e:
                fail([job], e)
        elif kind == "cancel":
            for s in [s for s in streams if s.job == msg[1]]:
                streams.remove(s)
                if s.conversation is not None:  # a conversation keeps what was said so far
                    s.conversation.end_turn(s.turn, s.generated)
        elif kind == "drop":
            conversations.pop(msg[1], None)
        return True

    while True:
        try:
            msgs = [inbox.get(timeout=None if not streams else 0.0)]
        except queue.Empty:
            msgs = []
        while True:  # everything already waiting
            try:
                msgs.append(inbox.get_nowait())
            except queue.Empty:
                break
        for msg in msgs:
            if not handle(msg):
                return
        if streams:  # one round: feed every stream's last frame, then draw the next frame of all at once
            batch, batched = list(streams), batch
            try:
                for s in batch:
                    s.h, s.last = fast.feed(s.last, s.cache), None
                going = draw(batch) if batched else [g for s in batch for g in draw([s])]
            except Exception as e:
                fail([s.job for s in batch], e)
                going = []
            streams[:] = going + [s for s in streams if s not in batch]


# --- the main process: workers, jobs, conversations --------------------------------------------
class Job:
    """A request being served: the asyncio queue its worker's messages arrive on."""

    def __init__(self, worker: int, loop: asyncio.AbstractEventLoop):
        self.id, self.worker, self.loop = uuid.uuid4().hex, worker, loop
        self.messages: asyncio.Queue = asyncio.Queue()
        self.finished = False


@dataclass
class KeptConversation:
    worker: int
    turns: int = 0
    positions: int = 0
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


class Pool:
    """The worker processes and the bookkeeping of jobs and kept conversations (main process)."""

    def __init__(self, model: str, codec: str, limits: Limits):
        self.model, self.codec, self.limits = model, codec, limits
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(limits.workers)]
        self.procs = [ctx.Process(target=worker_main, daemon=True,
                                  args=(i, model, codec, limits.threads, self.inboxes[i], self.outbox,
                                        bool(limits.batch)))
                      for i in range(limits.workers)]
        self.jobs: dict[str, Job] = {}
        self.conversations: dict[str, KeptConversation] = {}
        self.ready: dict[int, int] = {}  # worker -> pid
        self.lock = threading.Lock()

    def start(self, timeout: float = 300) -> None:
        for p in self.procs:
            p.start()
        threading.Thread(target=self._route, daemon=True).start()
        deadline = time.monotonic() + timeout
        while len(self.ready) < len(self.procs):
            if any(not p.is_alive() for p in self.procs) or time.monotonic() > deadline:
                raise RuntimeError("a worker process failed to load the model (see its output above)")
            time.sleep(0.05)

    def stop(self) -> None:
        for q in self.inboxes:
            q.put(("stop",))
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()

    def _route(self) -> None:
        """Thread: worker messages -> the asyncio queue of their job."""
        while True:
            msg = self.outbox.get()
            if msg[0] == "ready":
                self.ready[msg[1]] = msg[2]
                continue
            job = self.jobs.get(msg[1])
            if job is not None:
                job.loop.call_soon_threadsafe(job.messages.put_nowait, msg)

    def alive(self) -> list[bool]:
        return [p.is_alive() for p in self.procs]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def submit(self, message: tuple, worker: int | None = None) -> Job:
        """Admit a job (429 when ``max_streams`` are in progress) and send it to a worker."""
        with self.lock:
            if len(self.jobs) >= self.limits.max_streams:
                raise APIError(429, f"{len(self.jobs)} generations in progress, the limit of this server: "
                                    f"retry in a moment", {"Retry-After": "1"})
            if worker is None:  # the worker with the fewest jobs
                load = [sum(j.worker == w for j in self.jobs.values()) for w in range(len(self.procs))]
                worker = load.index(min(load))
            if not self.procs[worker].is_alive():
                raise APIError(503, f"worker {worker} has died; restart the server")
            job = Job(worker, asyncio.get_running_loop())
            self.jobs[job.id] = job
        self.inboxes[worker].put((message[0], job.id, *message[1:]))
        return job

    def finish(self, job: Job) -> None:
        """The job is over (done, failed, timed out, or the client left): the worker forgets it."""
        if not job.finished:
            job.finished = True
            self.inboxes[job.worker].put(("cancel", job.id))
            with self.lock:
                self.jobs.pop(job.id, None)

    # kept conversations
    def expire_conversations(self) -> None:
        now = time.monotonic()
        for cid, c in list(self.conversations.items()):
            if not c.busy and now - c.last_used > self.limits.conversation_idle_s:
                self.drop_conversation(cid)

    def new_conversation(self) -> str:
        self.expire_conversations()
        if len(self.conversations) >= self.limits.max_conversations:
            raise APIError(429, f"{len(self.conversations)} conversations are kept, the limit of this server: "
                                f"delete one (DELETE /conversations/{{id}}) or wait "
                                f"{self.limits.conversation_idle_s:g} s for idle ones to expire", {"Retry-After": "5"})
        load = [sum(c.worker == w for c in self.conversations.values()) for w in range(len(self.procs))]
        cid = uuid.uuid4().hex
        self.conversations[cid] = KeptConversation(worker=load.index(min(load)))
        return cid

    def conversation(self, cid: str) -> KeptConversation:
        self.expire_conversations()
        if cid not in self.conversations:
            raise APIError(404, f"no conversation {cid!r} on this server (never created, deleted, or idle for more "
                                f"than {self.limits.conversation_idle_s:g} s): create one with POST /conversations")
        return self.conversations[cid]

    def drop_conversation(self, cid: str) -> None:
        c = self.conversations.pop(cid)
        self.inboxes[c.worker].put(("drop", cid))


async def next_message(job: Job, deadline: float, timeout_s: float) -> tuple:
    """The job's next message from its worker; a 503 ``APIError`` when the request's time is up."""
    try:
        return await asyncio.wait_for(job.messages.get(), max(deadline - time.monotonic(), 0.001))
    except TimeoutError:
        raise APIError(503, f"the request took longer than this server's timeout of {timeout_s:g} s "
                            f"(ask for shorter audio, or retry when the server is less busy)") from None


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
    p = argparse.ArgumentParser(description="Serve the CSM over HTTP (FastAPI + uvicorn).")
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
