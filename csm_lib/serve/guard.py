"""What stands between a client and the app (chapter 11): who may ask, how long and how much it may send,
and what happens when it leaves.

``Access``: the API keys (each one a client, with its own quotas and conversations) and the host names
the server answers to. ``guard`` is the ASGI middleware every request passes, in this order:

1. the ``Host`` header must name this server (a web page that rebinds its own DNS name to 127.0.0.1
   sends its own name: 400);
2. the API key (``Authorization: Bearer <key>``), on every path but ``PUBLIC`` (401);
3. the body: at most ``max_body_bytes`` (413), all of it within ``body_timeout_s`` (408);
4. the app runs, and is cancelled if the client disconnects before its reply is complete: a generation
   nobody waits for frees its slot at once, streamed or not;
5. a stream that fails after its first bytes (the app raises ``StreamCut``) is *aborted*: the connection
   closes without the chunked body's last chunk, so the client's HTTP library reports an incomplete body
   instead of a short reply that looks whole.

Before all of these, ``http_protocol`` (uvicorn's HTTP/1.1 protocol, h11) bounds the connections: at most
``max_connections`` open (one more is answered 503 with ``Retry-After``), and a request's headers must
arrive within ``header_timeout_s`` of connecting or of the previous reply (else 408 and closed).
Starlette's ``TrustedHostMiddleware`` and uvicorn's ``limit_concurrency`` do parts of this; these answer
with a JSON ``detail`` that says what was wrong, as every other refusal of this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from csm_lib.serve.schema import Limits

PUBLIC = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # answered without a key
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
LOCAL_CLIENT = "local"  # the one client of a server without keys (loopback only)
log = logging.getLogger("uvicorn.error")


class StreamCut(Exception):
    """Raised by a streaming reply that cannot finish (timeout, worker error): the stream is aborted."""


def client_name(key: str) -> str:
    """A client's name in quotas, logs and ``/status``: a hash of its key (the key itself is never shown)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass
class Access:
    """Who may use the server: its API keys (none: any local client, as ``LOCAL_CLIENT``) and the host
    names clients may call it by (``*``: any)."""

    keys: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_NAMES))

    def host_allowed(self, headers: dict[bytes, bytes]) -> bool:
        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return "*" in self.hosts or name in self.hosts

    def client(self, headers: dict[bytes, bytes]) -> str | None:
        """The client a request comes from (its key's name), or None when its key is missing or wrong."""
        if not self.keys:
            return LOCAL_CLIENT
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return None
        match = [k for k in self.keys if hmac.compare_digest(k.encode(), given.strip().encode())]
        return client_name(match[0]) if match else None


def refusal(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """A refusal before the body is read: the connection closes after it (its unread body is not wanted)."""
    return JSONResponse({"detail": detail}, status, headers={"connection": "close", **(headers or {})})


async def read_body(receive, limits: Limits) -> bytes | JSONResponse | None:
    """The whole body, or the refusal to send (413 too large, 408 too slow); None if the client left."""
    deadline, chunks, size, more = time.monotonic() + limits.body_timeout_s, [], 0, True
    while more:
        try:
            msg = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            return refusal(408, f"the request body did not arrive within {limits.body_timeout_s:g} s, this "
                                f"server's body_timeout_s")
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > limits.max_body_bytes:
            return refusal(413, f"request body over this server's limit of {limits.max_body_bytes} bytes")
        more = msg.get("more_body", False)
    return b"".join(chunks)


async def follow_client(app, scope, receive, send, body: bytes, stats: dict) -> None:
    """Run ``app`` on the already read ``body``; cancel it if the client leaves before the reply is complete."""
    replayed, complete = False, False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    async def tracked(message):
        nonlocal complete
        await send(message)
        complete = complete or (message["type"] == "http.response.body" and not message.get("more_body", False))

    async def client_left():
        while (await receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(app(scope, replay, tracked)), asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done() and not complete:  # the client left first: nobody waits for this work
            work.cancel()
            stats["cancelled_on_disconnect"] += 1
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
        await work
    except StreamCut as e:  # returning without the last chunk makes the server abort the connection
        stats["streams_cut"] += 1
        log.warning("stream aborted: %s", e)
    finally:
        work.cancel()
        watch.cancel()


def guard(app, limits: Limits, access: Access, stats: dict):
    """The ASGI middleware of the module's docstring (steps 1-5) around ``app``; ``stats`` counts what it did."""
    stats |= {"cancelled_on_disconnect": 0, "streams_cut": 0}

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        if not access.host_allowed(headers):
            host = headers.get(b"host", b"").decode("latin-1")[:100]
            return await refusal(400, f"Host {host!r} is not a name this server answers to (its allowed hosts: "
                                      f"{', '.join(access.hosts)}; --allowed-hosts)")(scope, receive, send)
        client = access.client(headers)
        if client is None and scope["path"] not in PUBLIC:
            return await refusal(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                 {"www-authenticate": "Bearer"})(scope, receive, send)
        scope.setdefault("state", {})["client"] = client
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            too_big = refusal(413, f"request body over this server's limit of {limits.max_body_bytes} bytes")
            return await too_big(scope, receive, send)
        body = await read_body(receive, limits)
        if body is None:
            return
        if isinstance(body, JSONResponse):
            return await body(scope, receive, send)
        await follow_client(app, scope, receive, send, body, stats)

    return middleware


def raw_refusal(status: int, reason: str, detail: str, extra: str = "") -> bytes:
    """An HTTP/1.1 response written straight to the socket (before any request was parsed), then closed."""
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode() + body


def http_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a connection cap and a deadline for each request's headers."""

    class GuardedH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:  # every request on it: 503, then closed
                self.app = refusal(503, f"{len(self.connections) - 1} connections are open, the limit of this "
                                        f"server: retry in a moment", {"retry-after": "1"})
            self.expect_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.expect_headers()

        def expect_headers(self) -> None:
            """Close the connection unless a new request's headers are in within ``header_timeout_s``."""
            waiting = self.cycle  # a new request replaces it

            def too_slow() -> None:
                if self.cycle is waiting and not self.transport.is_closing():
                    self.transport.write(raw_refusal(408, "Request Timeout", f"the request's headers did not "
                                                     f"arrive within {limits.header_timeout_s:g} s, this server's "
                                                     f"header_timeout_s"))
                    self.transport.close()

            self.loop.call_later(limits.header_timeout_s, too_slow)

    return GuardedH11
