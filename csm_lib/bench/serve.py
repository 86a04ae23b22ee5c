"""Chapter 11's benchmark: the HTTP server under 1, 4 and 8 concurrent streaming clients.

    make bench-serve    # python -m csm_lib.bench serve -> results/serving.json (about 5 minutes)

The server (``csm_lib/serve/``) runs in its own processes, exactly as ``make serve`` starts it; the
clients are threads of this process, each sending its requests one after another and reading the
streamed WAV as it comes. Per request, from the moment it is sent:

- **TTFB**, time to the first audio byte: the first body chunk (WAV header and the first 80 ms of
  PCM leave together, so this is time to first audio);
- **RTF** of the stream: time from its first to its last byte over its audio duration (< 1: after
  the first byte the audio arrives faster than it plays); ``rtf_wall`` counts from the request
  (it adds TTFB, which weighs on short replies);
- **stall**: the longest a player starting at the first byte would wait for audio not yet
  arrived (0 for a stream that plays through);
- the audio's duration, so throughput = audio seconds served per wall second.

Texts are held-out WordNet sentences (the reference model's test split), short enough for one
turn; sampling as ``make serve``'s defaults (temperature 0.9, top-k 50), a seed per request.
Also measured: the server's memory (RSS of the main process and its workers) before and after
``memory_requests`` short requests; the codec's streaming decoder for 1..8 frames per chunk (why
chunks after the first are 4 frames); and the same 8 clients without batching (each stream's frame
drawn on its own) and on one worker with two torch threads (why one worker process per core).
"""

from __future__ import annotations

import functools
import threading
import time

import httpx
import numpy as np
import torch

from csm_lib import metrics
from csm_lib.serve.cli import Server

LEVELS = (1, 4, 8)  # concurrent streaming clients


@functools.cache
def test_sentences(max_chars: int = 90) -> tuple[str, ...]:
    """The held-out test sentences of the reference corpus's split (WordNet examples, seed 3), 20..max_chars long."""
    from csm_lib.sentences import split_sentences, wordnet_sentences

    return tuple(s for s in split_sentences(wordnet_sentences(), seed=3)["test"] if 20 <= len(s) <= max_chars)


def texts(n: int) -> list[str]:
    """``n`` of the held-out test sentences, in order (repeating if needed)."""
    test = test_sentences()
    return [test[i % len(test)] for i in range(n)]


def stream_once(url: str, body: dict, client: httpx.Client) -> dict:
    """One streamed request -> its status, TTFB, stream rate, stalls and audio duration (s).

    ``stall_s``: how long a player that starts at the first byte would wait, at worst, for audio
    that has not arrived (0: it plays through without a gap).
    """
    t0 = time.perf_counter()
    first, n_bytes, stall = None, 0, 0.0
    with client.stream("POST", url + "/generate", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            r.read()
            return {"status": r.status_code, "detail": r.text[:200]}
        bytes_per_s = 2 * int(r.headers["x-sample-rate"])
        for chunk in r.iter_bytes():
            now = time.perf_counter() - t0
            if chunk and first is None:
                first = now
            stall = max(stall, now - first - max(n_bytes - 44, 0) / bytes_per_s)  # due when played so far
            n_bytes += len(chunk)
    last = time.perf_counter() - t0
    audio_s = max(n_bytes - 44, 0) / bytes_per_s
    return {"status": 200, "ttfb_s": first, "wall_s": last, "audio_s": audio_s, "stall_s": stall,
            "rtf": (last - first) / audio_s if audio_s else None, "rtf_wall": last / audio_s if audio_s else None}


def run_clients(url: str, n_clients: int, per_client: int, max_audio_length_ms: float, seed0: int = 0,
                server: Server | None = None) -> dict:
    """``n_clients`` threads, each streaming ``per_client`` requests in turn -> per-request rows and the wall time."""
    sentences = texts(n_clients * per_client)
    rows: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in range(per_client):
                k = c * per_client + i
                row = stream_once(url, {"text": sentences[k], "speaker": k % 2, "seed": seed0 + k,
                                        "max_audio_length_ms": max_audio_length_ms}, http)
                with lock:
                    rows.append(row | {"client": c})

    cpu0, own0 = server.cpu_seconds() if server else None, time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"rows": rows, "wall_s": wall}
    if server:  # where the 2 cores went: share of the wall time each used (2.0 = both cores all the time)
        cpu1 = server.cpu_seconds()
        out["cores_used"] = {"server_main": round((cpu1["main"] - cpu0["main"]) / wall, 2),
                             "workers": round((cpu1["workers"] - cpu0["workers"]) / wall, 2),
                             "clients": round((time.process_time() - own0) / wall, 2)}
    return out


def summarize(run: dict) -> dict:
    ok = [r for r in run["rows"] if r["status"] == 200 and r["audio_s"] > 0]
    ttfb = np.array([r["ttfb_s"] for r in ok]) * 1000
    rtf, rtf_wall = np.array([r["rtf"] for r in ok]), np.array([r["rtf_wall"] for r in ok])
    stall = np.array([r["stall_s"] for r in ok]) * 1000
    audio = sum(r["audio_s"] for r in ok)
    statuses = [r["status"] for r in run["rows"]]
    return {"requests": len(run["rows"]), "ok": len(ok), "statuses": {str(s): statuses.count(s) for s in set(statuses)},
            "ttfb_p50_ms": round(float(np.percentile(ttfb, 50)), 1),
            "ttfb_p95_ms": round(float(np.percentile(ttfb, 95)), 1),
            "ttfb_max_ms": round(float(ttfb.max()), 1),
            "ttfb_p50_ci95_ms": [round(x, 1) for x in metrics.bootstrap_ci(
                lambda idx: float(np.median(ttfb[idx])), len(ttfb))],
            "rtf_median": round(float(np.median(rtf)), 3), "rtf_max": round(float(rtf.max()), 3),
            "streams_rtf_below_1": round(float((rtf < 1).mean()), 3),
            "rtf_wall_median": round(float(np.median(rtf_wall)), 3), "rtf_wall_max": round(float(rtf_wall.max()), 3),
            "stall_max_ms": round(float(stall.max()), 1), "streams_without_stall": round(float((stall <= 0).mean()), 3),
            "audio_s_median": round(float(np.median([r["audio_s"] for r in ok])), 2),
            "throughput_audio_s_per_s": round(audio / run["wall_s"], 2), "wall_s": round(run["wall_s"], 1),
            "cores_used": run.get("cores_used")}


def decoder_chunk_cost(frames: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 30) -> list[dict]:
    """The codec's causal decoder (one thread, as a worker runs it): ms per push of n frames, and per frame."""
    from csm_lib.codec import StreamingDecoder
    from csm_lib.generate import load_generator

    torch.set_num_threads(1)
    gen = load_generator()
    codes = torch.randint(1, gen.codec.cfg.codebook_size, (1, gen.codec.cfg.n_q, 8 * repeats))
    rows = []
    for n in frames:
        dec, times = StreamingDecoder(gen.codec, batch_size=1), []
        for i in range(0, codes.shape[-1] - n + 1, n):
            t0 = time.perf_counter()
            dec.push(codes[..., i:i + n])
            times.append(time.perf_counter() - t0)
        ms = float(np.median(times[2:])) * 1000
        rows.append({"chunk_frames": n, "ms_per_push": round(ms, 2), "ms_per_frame": round(ms / n, 2)})
    return rows


def bench_serve(threads: int = 1, repeats: int = 8, memory_requests: int = 500,
                max_audio_length_ms: float = 6000) -> dict:
    """The whole benchmark (``repeats``: requests per client at each level; the 1-client level gets 3x)."""
    from csm_lib.checkpoint import model_record
    from csm_lib.generate import REFERENCE_MODEL

    out: dict = {"what": "the HTTP server (csm_lib/serve/) on this machine: streaming clients at 1, 4, 8 "
                         "concurrent; memory over many requests; codec chunk cost; workers vs threads",
                 "texts": "held-out WordNet test sentences (reference split, seed 3), 20-90 characters",
                 "sampling": {"temperature": 0.9, "topk": 50, "seed": "one per request",
                              "max_audio_length_ms": max_audio_length_ms},
                 "ttfb": "request sent -> first body bytes (WAV header + first 80 ms of audio), client side",
                 "rtf": "first byte -> last byte, over the stream's audio duration (rtf_wall: from the request)",
                 "stall": "longest wait of a player started at the first byte for audio not yet arrived",
                 "cores_used": "CPU seconds per wall second of the server's main process, its workers, the clients"}
    out["measured_with"] = model_record(REFERENCE_MODEL)  # what the server's workers load
    out["codec_chunks"] = decoder_chunk_cost()
    # the clients are threads of one process, without keys: one client to the server, allowed all 8 streams
    with Server(workers=2, threads=threads, max_streams=8, max_streams_per_client=8) as server:
        out["server"] = {k: server.status()["limits"][k] for k in ("workers", "threads", "max_streams", "chunk_frames")}
        run_clients(server.url, 2, 2, max_audio_length_ms, seed0=10_000)  # warm-up
        out["levels"] = {}
        for n in LEVELS:
            per_client = repeats * 3 if n == 1 else repeats
            run = run_clients(server.url, n, per_client, max_audio_length_ms, server=server)
            out["levels"][str(n)] = summarize(run)
            print(n, "clients:", out["levels"][str(n)], flush=True)
        before = server.rss_mb()
        mem = run_clients(server.url, 8, memory_requests // 8 + (memory_requests % 8 > 0), 800, seed0=20_000)
        after = server.rss_mb()
        out["memory"] = {"requests": len(mem["rows"]), "max_audio_length_ms": 800, "clients": 8,
                         "ok": sum(r["status"] == 200 for r in mem["rows"]),
                         "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
                         "growth": round(after / before - 1, 4), "health_after": server.health()["status"]}
        print("memory:", out["memory"], flush=True)
    alternatives = {"no_batching": dict(workers=2, threads=threads, batch=0),  # streams drawn one by one
                    "one_worker_two_threads": dict(workers=1, threads=2)}  # one process, two torch threads
    for name, flags in alternatives.items():
        with Server(max_streams=8, max_streams_per_client=8, **flags) as server:
            run_clients(server.url, 2, 1, max_audio_length_ms, seed0=10_000)
            out[name] = {"8": summarize(run_clients(server.url, 8, repeats, max_audio_length_ms, server=server))}
            print(name, out[name], flush=True)
    return out
