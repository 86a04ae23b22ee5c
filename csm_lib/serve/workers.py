"""The server's worker processes and the main process's side of them (chapter 11).

A worker (``worker_main``) loads the model and serves its streams round by round, one frame of every
stream per round (continuous batching); the main process's ``Pool`` starts the workers (and replaces
one that dies), admits jobs (429 over ``max_streams``, or over a client's ``max_streams_per_client``),
routes each worker's messages to the asyncio queue of their job, and keeps the bookkeeping of
conversations kept server-side (each owned by the client that created it, pinned to one worker).
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
from multiprocessing.connection import Connection, wait

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


def worker_main(index: int, model: str, codec: str, threads: int, inbox: mp.Queue, outbox: Connection,
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
    outbox.send(("ready", index, os.getpid()))

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
            outbox.send(("chunk", s.job, pcm16(torch.cat(parts).numpy())))
            s.sent_first = True

    def finish(s: Stream, ended_by_model: bool) -> None:
        send_chunk(s, final=True)
        info = {"frames": len(s.generated), "ended_by_model": ended_by_model, "warnings": s.warnings}
        if s.conversation is not None:
            s.conversation.end_turn(s.turn, s.generated)
            info |= {"turns": len(s.conversation.turns), "positions": s.conversation.positions}
        outbox.send(("done", s.job, info))

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
            outbox.send(("error", job, status, str(e) if status == 422 else f"{type(e).__name__}: {e}"))

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
                outbox.send(("done", job, {"turns": len(conv.turns), "positions": conv.positions}))
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
@dataclass
class Worker:
    """The main process's handle on one worker process: its inbox (a queue) and its outbox (a pipe)."""

    index: int
    process: mp.Process
    inbox: mp.Queue
    outbox: Connection  # the reading end; the worker holds the only writing end, so EOF means it has exited
    pid: int | None = None  # set when it has loaded the model ("ready")
    dead: bool = False


@dataclass
class Job:
    """A request being served: its client, its worker, and the asyncio queue its worker's messages arrive on."""

    client: str
    worker: Worker
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    messages: asyncio.Queue = field(default_factory=asyncio.Queue)
    sent: bool = False  # its message went to the worker
    answered: bool = False  # the worker sent "done" or "error": it has forgotten the job
    finished: bool = False


@dataclass
class KeptConversation:
    owner: str  # the client that created it: only it may use, read or delete it
    worker: int
    turns: int = 0
    positions: int = 0
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


class Pool:
    """The worker processes and the bookkeeping of jobs and kept conversations (main process).

    Everything here runs on the event loop's thread but ``_route``, a thread that reads the workers'
    outboxes and hands each message, and each worker's exit, to the loop. A worker that exits is
    replaced: its jobs are answered 503, its conversations are gone (they lived in its memory). Each
    worker has its own inbox and outbox, so one killed while writing corrupts nothing the others use.
    """

    def __init__(self, model: str, codec: str, limits: Limits):
        self.model, self.codec, self.limits = model, codec, limits
        self.ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        self.workers: list[Worker] = []
        self.jobs: dict[str, Job] = {}
        self.conversations: dict[str, KeptConversation] = {}
        self.stats = {"restarts": 0, "abandoned": 0}  # workers replaced; jobs ended before their worker answered
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = self.stopping = False

    def _spawn(self, index: int) -> Worker:
        inbox, (reader, writer) = self.ctx.Queue(), self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=worker_main, daemon=True, args=(index, self.model, self.codec, self.limits.threads,
                                                                    inbox, writer, bool(self.limits.batch)))
        p.start()
        writer.close()
        return Worker(index, p, inbox, reader)

    async def start(self, timeout: float = 300) -> None:
        self.loop = asyncio.get_running_loop()
        self.workers = [self._spawn(i) for i in range(self.limits.workers)]
        threading.Thread(target=self._route, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not all(w.pid for w in self.workers):
            if any(w.dead for w in self.workers) or time.monotonic() > deadline:
                raise RuntimeError("a worker process failed to load the model (see its output above)")
            await asyncio.sleep(0.05)
        self.started = True

    def stop(self) -> None:
        self.stopping = True
        for w in self.workers:
            if not w.dead:
                w.inbox.put(("stop",))
        for w in self.workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()

    def _route(self) -> None:
        """Thread: each worker's messages -> the loop (``_deliver``); a closed outbox -> ``_worker_exited``."""
        while not self.stopping:
            live = {w.outbox: w for w in list(self.workers) if not w.outbox.closed}
            for conn in wait(list(live), timeout=0.2):
                try:
                    msg = conn.recv()
                except Exception:  # EOF (or half a message): the process has exited
                    conn.close()
                    self.loop.call_soon_threadsafe(self._worker_exited, live[conn])
                    continue
                self.loop.call_soon_threadsafe(self._deliver, live[conn], msg)

    def _deliver(self, worker: Worker, msg: tuple) -> None:
        if msg[0] == "ready":
            worker.pid = msg[2]
            return
        job = self.jobs.get(msg[1])
        if job is not None:
            job.answered = job.answered or msg[0] in ("done", "error")
            job.messages.put_nowait(msg)

    def _worker_exited(self, w: Worker) -> None:
        """Answer the dead worker's jobs with an error, forget its conversations, start its replacement."""
        w.dead = True
        if w.process.is_alive():  # its pipe broke, yet it runs: it cannot be talked to
            w.process.kill()
        w.process.join(timeout=1)
        w.inbox.cancel_join_thread()
        w.inbox.close()
        if self.stopping:
            return
        how = f"killed by signal {-w.process.exitcode}" if (w.process.exitcode or 0) < 0 else "exited"
        for job in [j for j in self.jobs.values() if j.worker is w]:
            job.messages.put_nowait(("error", job.id, 503, f"the worker serving this request {how}; a new one is "
                                                           f"starting: retry in a few seconds"))
        for cid in [cid for cid, c in self.conversations.items() if c.worker == w.index]:
            del self.conversations[cid]
        if self.started:
            self.stats["restarts"] += 1
            # one that never became ready (a broken model?) is not retried at once, again and again
            self.loop.call_later(0 if w.pid else 5, self._replace, w.index)

    def _replace(self, index: int) -> None:
        if not self.stopping:
            self.workers[index] = self._spawn(index)

    def ready(self) -> list[Worker]:
        return [w for w in self.workers if w.pid and not w.dead]

    def pids(self) -> list[int | None]:
        return [w.pid for w in self.workers]

    def admit(self, client: str, worker: int | None = None) -> Job:
        """Admit a job of ``client`` (429 over ``max_streams`` or its ``max_streams_per_client``) on a ready
        worker: ``worker``, or the one with the fewest jobs (503 when none is ready)."""
        busy, mine = len(self.jobs), sum(j.client == client for j in self.jobs.values())
        if busy >= self.limits.max_streams:
            raise APIError(429, f"{busy} generations in progress, the limit of this server: retry in a moment",
                           {"Retry-After": "1"})
        if mine >= self.limits.max_streams_per_client:
            raise APIError(429, f"this client has {mine} generations in progress, its limit on this server: "
                                f"retry when one has ended", {"Retry-After": "1"})
        ready = [w for w in self.ready() if worker is None or w.index == worker]
        if not ready:
            raise APIError(503, "no worker is ready to serve this (one is starting after a failure): retry in a "
                                "few seconds", {"Retry-After": "5"})
        job = Job(client, min(ready, key=lambda w: sum(j.worker is w for j in self.jobs.values())))
        self.jobs[job.id] = job
        return job

    def send(self, job: Job, message: tuple) -> None:
        """Send an admitted job's message (``("generate", request)``, ``("add", conversation, turns)``); not if its
        worker died meanwhile (the job's queue already holds the error that says so)."""
        if not job.worker.dead:
            job.worker.inbox.put((message[0], job.id, *message[1:]))
            job.sent = True

    def finish(self, job: Job) -> None:
        """The job is over (done, failed, timed out, or the client left): the worker forgets it."""
        if not job.finished:
            job.finished = True
            if job.sent and not job.answered:  # still being worked on: stop it
                self.stats["abandoned"] += 1
                if not job.worker.dead:
                    job.worker.inbox.put(("cancel", job.id))
            self.jobs.pop(job.id, None)

    # kept conversations
    def expire_conversations(self) -> None:
        now = time.monotonic()
        for cid, c in list(self.conversations.items()):
            if not c.busy and now - c.last_used > self.limits.conversation_idle_s:
                self.drop_conversation(cid)

    def new_conversation(self, owner: str) -> str:
        self.expire_conversations()
        kept, mine = len(self.conversations), sum(c.owner == owner for c in self.conversations.values())
        wait_s = f"{self.limits.conversation_idle_s:g} s"
        if kept >= self.limits.max_conversations:
            raise APIError(429, f"{kept} conversations are kept, the limit of this server: delete one (DELETE "
                                f"/conversations/{{id}}) or wait {wait_s} for idle ones to expire",
                           {"Retry-After": "5"})
        if mine >= self.limits.max_conversations_per_client:
            raise APIError(429, f"this client keeps {mine} conversations, its limit on this server: delete one "
                                f"(DELETE /conversations/{{id}}) or wait {wait_s} for idle ones to expire",
                           {"Retry-After": "5"})
        ready = self.ready()
        if not ready:
            raise APIError(503, "no worker is ready (one is starting after a failure): retry in a few seconds",
                           {"Retry-After": "5"})
        load = {w.index: sum(c.worker == w.index for c in self.conversations.values()) for w in ready}
        cid = uuid.uuid4().hex
        self.conversations[cid] = KeptConversation(owner, min(load, key=load.get))
        return cid

    def conversation(self, cid: str, owner: str) -> KeptConversation:
        """The kept conversation ``cid`` of ``owner`` (its use keeps it alive); 404 for anyone else's."""
        self.expire_conversations()
        c = self.conversations.get(cid)
        if c is None or c.owner != owner:
            raise APIError(404, f"no conversation {cid!r} for this client on this server (never created, created "
                                f"with another API key, deleted, idle for more than "
                                f"{self.limits.conversation_idle_s:g} s, or lost with a worker that stopped): "
                                f"create one with POST /conversations")
        c.last_used = time.monotonic()
        return c

    def drop_conversation(self, cid: str) -> None:
        c = self.conversations.pop(cid)
        w = self.workers[c.worker]
        if not w.dead:
            w.inbox.put(("drop", cid))


async def next_message(job: Job, deadline: float, timeout_s: float) -> tuple:
    """The job's next message from its worker; a 503 ``APIError`` when the request's time is up."""
    try:
        return await asyncio.wait_for(job.messages.get(), max(deadline - time.monotonic(), 0.001))
    except TimeoutError:
        raise APIError(503, f"the request took longer than this server's timeout of {timeout_s:g} s "
                            f"(ask for shorter audio, or retry when the server is less busy)",
                       {"Retry-After": "5"}) from None
