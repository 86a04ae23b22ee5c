"""Serving CSM over HTTP (chapter 11): a FastAPI ``/generate`` that streams, validates and holds load.

    make serve                     # python -m csm_lib.serve: the reference model on 127.0.0.1:8000
    curl -s localhost:8000/generate -H 'content-type: application/json' \\
         -d '{"text": "the rain stopped at noon", "speaker": 0, "seed": 1}' -o reply.wav

How a request flows (one picture to keep in mind)::

    HTTP client -> uvicorn (main process, asyncio)         worker processes (torch, 1 thread each)
                   connections, header time    -- 503/408
                   host, API key, body         -- 400/401/413/408
                   validate (pydantic + Limits) -- 4xx    ┌> worker 0: round-robin over its streams,
                   admit (server, client quota) -- 429   ─┤  one frame per stream per turn, a causal
                   WAV headers, then decode    -- 422    └> worker 1: codec decoder per stream
                   await the first chunk (errors -> 4xx), then stream PCM chunks back as they come
                   (the client leaves: its work is cancelled; the stream fails: it is aborted)

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

Every bad input is answered 4xx with a message saying what was wrong and what is expected: 400
(a Host this server is not), 401 (missing or wrong API key), 408 (headers or body too slow), 413
(body too large), 422 (invalid fields, audio that is not an accepted WAV or too long, a turn that
does not fit the model's window), 404 (unknown conversation, or another key's), 409 (a conversation
already generating), 429 (``max_streams`` generations in progress, or the client's own quota, or too
many conversations kept; ``Retry-After``), 503 only when the server itself is full (connections),
out of time (``request_timeout_s``) or its worker died (``Retry-After``; a new worker is started).
Every limit is checked before the work it bounds.

The parts, in the order a request meets them:

* ``cli.py``: the command line (who may reach the server: loopback without a key, any other address
  only with one; every limit as a flag), and ``Server`` (the command in a subprocess, for tests,
  benchmarks and chapter 11);
* ``guard.py``: what stands in front of the app: connections, header and body time, hosts, API keys,
  the body's size; a client that leaves cancels its work; a stream that fails is aborted;
* ``schema.py``: what a request may contain (pydantic models, the server's ``Limits``, ``APIError``);
* ``wav.py``: audio in and out: a context turn's base64 WAV checked (size, header, samples) and decoded,
  replies as PCM and WAV;
* ``app.py``: the FastAPI app (validation, admission, decoding in a thread, streaming);
* ``workers.py``: the worker processes (the model, its streams, continuous batching) and the main
  process's ``Pool`` that admits jobs, routes them and kept conversations to the workers, and replaces
  a worker that dies.

``python -m csm_lib.serve`` (``__main__.py``) runs ``cli.main``.
"""
