"""The server's worker processes and the main process's side of them (chapter 11).

A worker (``worker_main``) loads the model and serves its streams round by round, one frame of every
stream per round (continuous batching); the main process's ``Pool`` starts the workers, admits jobs
(429 over ``max_streams``), routes each worker's messages to the asyncio queue of their job, and
keeps the bookkeeping of conversations kept server-side (each pinned to one worker).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field

from csm_lib.serve.schema import APIError, Limits
from csm_lib.serve.wav import pcm16


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
