"""What a request to the server may contain (chapter 11): the pydantic models of the API, the server's
``Limits``, and ``APIError``, the answer other than 200.

The models' bounds are ceilings written into the OpenAPI schema (``/openapi.json``); a running
server's ``Limits`` (each one a flag of ``python -m csm_lib.serve``) may be stricter, and ``app.py``
checks them with a message that says what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from csm_lib.generate import REFERENCE_TEMPERATURE
from csm_lib.text import N_SPEAKERS

# ceilings written into the OpenAPI schema; the server's Limits may be stricter
TEXT_CEILING = 2_000  # characters of one turn's text
TURNS_CEILING = 32  # context turns in one request
AUDIO_MS_CEILING = 60_000  # max_audio_length_ms
SEED_CEILING = 2**63 - 1


def limit(default: float, bounds: str, answer: str):
    """A field of ``Limits``: its default, what it bounds and the answer past it (``--help``, the README,
    chapter 11's table)."""
    return field(default=default, metadata={"bounds": bounds, "answer": answer})


@dataclass
class Limits:
    """What one server accepts. Each limit is a CLI flag of ``python -m csm_lib.serve`` (``--max-text-chars``).

    A request meets them in this order, each before the work it bounds: the connection (count, header
    and body time, sizes), the fields (lengths), the client's and the server's quotas (admission), then
    the context audio's headers, and only then decoding and generation.
    """

    # connections (uvicorn and serve/guard.py), before any request is read
    max_connections: int = limit(32, "open HTTP connections", "503 + Retry-After, then closed")
    header_timeout_s: float = limit(10.0, "to send a request's headers, from connecting or the last reply",
                                    "408, then closed")
    body_timeout_s: float = limit(30.0, "to send the whole body, once the headers are in", "408, then closed")
    keep_alive_s: float = limit(5.0, "an idle connection between requests", "closed")
    max_header_bytes: int = limit(16 * 2**10, "request line and headers", "400, then closed")
    max_body_bytes: int = limit(8 * 2**20, "the HTTP body (base64 WAVs are most of it)", "413")
    # the fields of a request, checked before it is admitted
    max_text_chars: int = limit(400, "one turn's text", "422")
    max_context_turns: int = limit(8, "context turns of one request", "422")
    max_context_audio_s: float = limit(60.0, "all context audio of a request together (read from the WAV "
                                       "headers before decoding)", "422")
    max_audio_length_ms: float = limit(20_000, "the longest reply one may ask for", "422")
    # admission: generations and kept conversations, for the server and for each client (API key)
    max_streams: int = limit(8, "generations in progress at once", "429 + Retry-After")
    max_streams_per_client: int = limit(4, "generations in progress at once, per client", "429 + Retry-After")
    max_conversations: int = limit(32, "conversations kept server-side", "429 + Retry-After")
    max_conversations_per_client: int = limit(8, "conversations kept server-side, per client",
                                              "429 + Retry-After")
    conversation_idle_s: float = limit(600.0, "a kept conversation unused this long is dropped", "404 after")
    request_timeout_s: float = limit(60.0, "from admission to the last chunk",
                                     "503 + Retry-After; a stream already started is aborted")
    # the workers
    workers: int = limit(2, "worker processes (one per core); a dead one is replaced", "")
    threads: int = limit(1, "torch threads per worker", "")
    chunk_frames: int = limit(4, "default 80 ms frames per chunk after the first", "")
    batch: int = limit(1, "1: draw the frames of a worker's streams together (continuous batching); 0: one by one",
                       "")


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

