"""The server against hostile and careless clients (csm_lib/serve/guard.py, issue 30), tested on a real one:
uvicorn in a subprocess on 127.0.0.1, with two API keys, one worker and small limits so that each can be hit.

Every test talks to it over HTTP (or a raw socket, for the slow clients) as a client would.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from csm_lib.outputs import REPO
from csm_lib.serve.cli import KEY_ENV, Server, access_for, limits_markdown

KEY_A, KEY_B = "a-key-of-client-a-0123456789", "a-key-of-client-b-9876543210"
A, B = ({"authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
LIMITS = dict(workers=1, max_streams=3, max_streams_per_client=1, max_conversations=4, max_conversations_per_client=2,
              max_connections=6, header_timeout_s=2, body_timeout_s=2, max_audio_length_ms=8000)
LONG = {"text": "a long answer about the weather and the sea and the rain " * 3, "seed": 0,
        "max_audio_length_ms": 8000}  # several seconds of audio: a generation that lasts


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with Server(log=tmp_path_factory.mktemp("guard") / "server.log", api_keys=(KEY_A, KEY_B), **LIMITS) as s:
        yield s


def flac_bomb(minutes: int = 120) -> str:
    """Base64 of a FLAC file of ``minutes`` of constant audio: ~485 KB for two hours, 460 MB as float32."""
    buf, minute = io.BytesIO(), np.full(16_000 * 60, 0.25, dtype=np.float32)
    with sf.SoundFile(buf, "w", 16_000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(minute)
    return base64.b64encode(buf.getvalue()).decode()


def peak_rss_mb(pid: int, reset: bool = False) -> float:
    """A process's peak resident memory (VmHWM, MB); ``reset``: start the peak afresh from now (Linux)."""
    if reset:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_compressed_audio_bomb_is_refused_before_decoding(guarded):
    bomb = flac_bomb()
    frames = sf.info(io.BytesIO(base64.b64decode(bomb))).frames
    assert len(bomb) < 600_000 and frames * 4 > 400e6  # small enough to send, 460 MB once decoded to float32
    before = peak_rss_mb(guarded.proc.pid, reset=True)
    r = httpx.post(guarded.url + "/generate", headers=A, timeout=60,
                   json={"text": "hi", "context": [{"speaker": 0, "text": "two hours", "audio": bomb}]})
    growth = peak_rss_mb(guarded.proc.pid) - before
    assert r.status_code == 422 and "a FLAC file" in r.json()["detail"] and "WAV" in r.json()["detail"], r.text
    assert growth < 50, f"the main process's peak memory grew {growth:.0f} MB"


def trickle(port: int, head: bytes, slow: bytes, gap: float = 0.2, limit_s: float = 15) -> tuple[float, bytes]:
    """A slow client: send ``head`` at once, then ``slow`` one byte every ``gap`` s -> the seconds until the
    server closed the connection (``limit_s`` if it never did) and what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=gap) as s:
        t0, answer, sent = time.monotonic(), b"", 0
        s.sendall(head)
        while time.monotonic() - t0 < limit_s:
            try:
                if sent < len(slow):
                    s.sendall(slow[sent:sent + 1])
                    sent += 1
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            answer += chunk
        return time.monotonic() - t0, answer


def test_slow_clients_are_cut_off(guarded):
    """Headers sent a byte at a time, and a body sent a byte at a time, are cut off within their timeouts (408)."""
    request = b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY_A.encode()
    took, answer = trickle(guarded.port, b"", request + b"\r\ncontent-type: application/json\r\n" * 10)
    assert took < LIMITS["header_timeout_s"] + 1.5 and b" 408 " in answer and b"header_timeout_s" in answer, answer
    head = request + b"\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    took, answer = trickle(guarded.port, head, b'{"text": "' + b"a" * 480 + b'"}')
    assert took < LIMITS["body_timeout_s"] + 1.5 and b" 408 " in answer and b"body_timeout_s" in answer, answer


def test_connections_are_bounded(guarded):
    idle = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(LIMITS["max_connections"])]
    try:
        r = httpx.get(guarded.url + "/health")
        assert r.status_code == 503 and r.headers["retry-after"] and "connections" in r.json()["detail"]
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert guarded.health()["status"] == "ok"


def test_keys_hosts_and_ownership(guarded):
    url = guarded.url
    assert httpx.get(url + "/health").json() == {"status": "ok"}  # public: liveness, nothing more
    for headers in ({}, {"authorization": "Bearer not-a-key-of-this-server"}, {"authorization": KEY_A}):
        r = httpx.post(url + "/conversations", json={}, headers=headers)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"], r.text
    assert httpx.get(url + "/status").status_code == 401  # paths, pids and limits only with a key
    rebound = httpx.get(url + "/health", headers={"host": "attacker.example:8000"})  # a DNS-rebinding page
    assert rebound.status_code == 400 and "attacker.example" in rebound.json()["detail"]

    mine = [httpx.post(url + "/conversations", json={}, headers=A) for _ in range(3)]
    assert [r.status_code for r in mine] == [201, 201, 429] and "this client keeps 2" in mine[2].json()["detail"]
    theirs = httpx.post(url + "/conversations", json={}, headers=B)  # A's quota does not lock B out
    assert theirs.status_code == 201
    cid = mine[0].json()["id"]
    for r in (httpx.get(f"{url}/conversations/{cid}", headers=B), httpx.delete(f"{url}/conversations/{cid}", headers=B),
              httpx.post(f"{url}/generate", json={"text": "hi", "conversation_id": cid}, headers=B)):
        assert r.status_code == 404 and "no conversation" in r.json()["detail"], r.text
    assert httpx.get(f"{url}/conversations/{cid}", headers=A).status_code == 200
    for r, h in [(mine[0], A), (mine[1], A), (theirs, B)]:
        assert httpx.delete(f"{url}/conversations/{r.json()['id']}", headers=h).status_code == 204


def test_per_client_stream_quota(guarded):
    with httpx.stream("POST", guarded.url + "/generate", json={**LONG, "stream": True}, headers=A, timeout=60) as s:
        chunks = s.iter_raw()  # (kept: a dropped iterator closes the stream)
        assert s.status_code == 200 and next(chunks)  # A's one stream is speaking
        again = httpx.post(guarded.url + "/generate", json={"text": "hi"}, headers=A, timeout=60)
        other = httpx.post(guarded.url + "/generate", json={"text": "hi", "seed": 0}, headers=B, timeout=60)
    assert again.status_code == 429 and "this client has 1" in again.json()["detail"] and again.headers["retry-after"]
    assert other.status_code == 200


def test_a_client_that_leaves_frees_its_slot(guarded):
    """A non-streamed request whose client disconnects is cancelled at once: its slot is free again."""
    before = guarded.wait_for(lambda s: s["streams"] == 0)  # (the last test's stream is released)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(guarded.url + "/generate", json=LONG, headers=A, timeout=httpx.Timeout(30, read=0.5))
    after = guarded.wait_for(lambda s: s["streams"] == 0, timeout=3)
    assert after["cancelled_on_disconnect"] == before["cancelled_on_disconnect"] + 1
    assert after["abandoned"] == before["abandoned"] + 1  # its worker was still generating it
    assert httpx.post(guarded.url + "/generate", json={"text": "hi"}, headers=A, timeout=60).status_code == 200


def test_a_killed_worker_is_replaced_and_its_stream_aborted(guarded):
    """SIGKILL the worker mid-stream: the stream is aborted (not ended as if whole), a new worker starts, and
    the server serves again."""
    before = guarded.wait_for(lambda s: s["streams"] == 0)
    with httpx.stream("POST", guarded.url + "/generate", json={**LONG, "stream": True}, headers=A, timeout=60) as s:
        chunks = s.iter_raw()
        next(chunks)
        os.kill(before["pids"][0], signal.SIGKILL)
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            for _ in chunks:
                pass
    after = guarded.wait_for(lambda s: s["workers_ready"] == 1, timeout=120)
    assert after["restarts"] == before["restarts"] + 1 and after["pids"] != before["pids"]
    assert after["streams_cut"] == before["streams_cut"] + 1 and after["streams"] == 0
    assert httpx.post(guarded.url + "/generate", json={"text": "hi"}, headers=A, timeout=60).status_code == 200


def test_exposed_only_with_a_key():
    """Any address but loopback needs an API key, and a wildcard one the host names; the command refuses to
    start otherwise (checked here before anything is bound: its model path does not even exist)."""
    with pytest.raises(ValueError, match="no API key"):
        access_for("0.0.0.0", [])
    with pytest.raises(ValueError, match="allowed-hosts"):
        access_for("0.0.0.0", [KEY_A])
    with pytest.raises(ValueError, match="16 characters"):
        access_for("127.0.0.1", ["short"])
    assert access_for("0.0.0.0", [KEY_A], ["myserver.lan"]).hosts == ["myserver.lan"]
    assert access_for("192.168.1.20", [KEY_A]).hosts[-1] == "192.168.1.20"
    assert access_for("127.0.0.1", []).keys == []  # loopback: no key needed
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    r = subprocess.run([sys.executable, "-m", "csm_lib.serve", "--host=0.0.0.0", "--model=/nonexistent"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no API key is set" in r.stderr, r.stderr[-500:]


def test_the_readme_documents_every_limit():
    assert limits_markdown() in (REPO / "README.md").read_text()
