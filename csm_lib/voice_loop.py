"""A streaming voice loop, timed from the moment the user falls silent to the first sound of the reply (chapter 09).

Chapter 09's "full turn" recognises the user's turn only after it is over. A voice agent listens while the user
speaks; what a listener feels is the gap between the end of their speech and the reply's first sound:

    the user's audio, 80 ms chunks at real speed (``RealClock``; ``SimulatedClock`` skips the waiting)
        │ each chunk as it arrives:
        ├─▶ voice activity, 32 ms windows (silero-vad) ─▶ ``EndOfTurn``: silence_ms of silence after speech
        └─▶ pocketsphinx ``process_raw`` (``StreamingRecognizer``): its first pass runs while the user speaks
            (gated: after ASR_TAIL_MS of silence the chunks waiting for the rule are not decoded)
    end of turn ─▶ ``end_utt``: the final hypothesis
               ─▶ the text LM writes the reply, streamed ─▶ ``PhraseCut``: its first phrase
               ─▶ the speech generator: a streaming one (CSM) starts on the first phrase, the others on the
                  whole reply (``ReplySystem.starts_on``) ─▶ the first reply sample

**The end-of-turn rule** (``EndOfTurn``): a 32 ms window is speech when silero-vad's P(speech) >= 0.5; the turn
ends once ``silence_ms`` of non-speech windows follow at least ``min_speech_ms`` of speech. The rule counts audio
time (windows), so its decision depends on the audio alone; it is *made* when the chunk holding its last window
arrives (up to one chunk, 80 ms, later). A pause inside the turn longer than ``silence_ms`` (plus the detector's
own hangover, ~60 ms for silero on flite's voices) ends the turn early: a false cut-in.

**The first phrase** (``PhraseCut``): the reply's text up to its first sentence end (``. ? !``), or to a comma,
semicolon or colon once it holds ``min_words`` words, or to the space after ``max_words`` words, whichever the LM
writes first; never inside a word. A shorter phrase starts sooner, but CSM speaks it as a whole turn (its
intonation closes, and it ends with its end-of-speech frame), so the rest of the reply starts again as a new turn.

**The conversation**: a streaming system keeps chapter 08's ``Conversation`` across turns. The user's turn
joins it as heard (the final hypothesis, the audio up to the decision) once the hypothesis is final: a turn's
text comes before its audio in the layout, so its audio cannot run through the backbone while it is spoken; the
reply joins it as its codes. ``bench/loop.py`` wires chapter 09's four systems into ``ReplySystem``s.

**The timeline** (``Timeline``): in ms after the end of speech (``end_of_speech``: the last 10 ms frame of the
user's audio within 40 dB of its loudest, measured on the audio, never the detector's view): the detector's
decision, the recogniser's final hypothesis, the LM's first phrase (and whole reply), the first reply sample.
Clock time 0 is the user's first sample: sample n is spoken at n / sr and arrives with the end of its chunk.

Explained in chapter 09 (``notebooks/09_latency_table.ipynb``); ``make bench-loop`` measures it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from csm_lib import metrics
from csm_lib.generate import Segment

SAMPLE_RATE = 16_000  # what the detector and the recogniser take (the corpus's and the codec's rate)
CHUNK_MS = 80  # the user's audio arrives in chunks this long: one codec frame
# the silence the recogniser is still fed before the rule decides (``Listener``): the smallest whose streamed WER on
# the valid split's user turns is within a point of feeding every chunk (results/voice_loop.json recognition.asr_tail)
ASR_TAIL_MS = 0.0
SENTENCE_END = ".?!"
CLAUSE_END = ",;:"


# ----------------------------------------------------------------------------- clocks


class RealClock:
    """Seconds since ``start()``; ``wait_until(t)`` sleeps until then: the audio arrives at real speed."""

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        if (d := t - self.now()) > 0:
            time.sleep(d)


class SimulatedClock(RealClock):
    """A ``RealClock`` whose waits cost nothing: ``wait_until(t)`` jumps to ``t``. Work between waits still takes
    its real time, so a timeline holds the same work under both clocks; only the idle time is skipped (tests)."""

    def start(self) -> None:
        self.base, self.t0 = 0.0, time.perf_counter()

    def now(self) -> float:
        return self.base + time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        if t > self.now():
            self.base, self.t0 = t, time.perf_counter()


# ----------------------------------------------------------------------------- the truth: where speech ends


def frame_db(audio: torch.Tensor, sr: int, frame_ms: float = 10.0) -> tuple[torch.Tensor, int]:
    """The power of each whole ``frame_ms`` frame of ``audio`` (T,) in dB (F,), and a frame's length in samples."""
    n = max(1, round(sr * frame_ms / 1000))
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    return 10 * torch.log10(frames.pow(2).mean(1) + 1e-12), n


def speech_span(audio: torch.Tensor, sr: int, floor_db: float = 40.0, frame_ms: float = 10.0) -> tuple[float, float]:
    """(start, end) of speech in ``audio`` (T,), in seconds: the first and last ``frame_ms`` frames whose RMS is
    within ``floor_db`` of the loudest frame's. flite's phone timings agree within 10-80 ms (a last phone decays)."""
    db, n = frame_db(audio, sr, frame_ms)
    loud = (db > db.max() - floor_db).nonzero()[:, 0]
    return loud[0].item() * n / sr, (loud[-1].item() + 1) * n / sr


def end_of_speech(audio: torch.Tensor, sr: int, floor_db: float = 40.0) -> float:
    """Seconds from the start of ``audio`` (T,) to its last voiced sample (``speech_span``)."""
    return speech_span(audio, sr, floor_db)[1]


# ----------------------------------------------------------------------------- voice activity and the rule


class SileroDetector:
    """silero-vad (its weights ship in its wheel; ``metrics`` loads them once): P(speech) of each 32 ms window
    (512 samples at 16 kHz). Stateful (a recurrent net): ``reset()`` before each turn. It runs on one torch
    thread: a window gains nothing from two, and on a busy CPU the second thread's waiting made a window
    take 2-20 ms instead of 0.3."""

    window = 512

    def __init__(self) -> None:
        self.model = metrics._vad()

    def reset(self) -> None:
        self.model.reset_states()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return float(self.model(x, SAMPLE_RATE))
        finally:
            torch.set_num_threads(threads)


class EnergyDetector:
    """P(speech) = 1 when a 32 ms window's RMS is above ``db`` dBFS, else 0: no model, exact on synthetic audio."""

    window = 512

    def __init__(self, db: float = -50.0) -> None:
        self.db = db

    def reset(self) -> None:
        pass

    def __call__(self, x: torch.Tensor) -> float:
        return float(10 * math.log10(float(x.pow(2).mean()) + 1e-12) > self.db)


@dataclass
class EndOfTurn:
    """The turn ends once ``silence_ms`` of non-speech windows follow at least ``min_speech_ms`` of speech; a
    window is speech when P(speech) >= ``threshold``. ``start()``, then ``push`` each window's P(speech)."""

    silence_ms: float = 500.0
    threshold: float = 0.5
    min_speech_ms: float = 64.0
    window_ms: float = 32.0

    def __post_init__(self) -> None:
        if self.silence_ms <= 0 or self.min_speech_ms < 0 or not 0 < self.threshold < 1:
            raise ValueError(f"need silence_ms > 0, min_speech_ms >= 0 and 0 < threshold < 1: {self}")
        self.start()

    def start(self) -> None:
        self.speech = self.silence = 0  # windows of speech so far; non-speech windows since the last speech

    def push(self, p: float) -> bool:
        """One window's P(speech) -> whether the turn has ended with it."""
        if p >= self.threshold:
            self.speech, self.silence = self.speech + 1, 0
        elif self.speech:
            self.silence += 1
        return (self.speech * self.window_ms >= self.min_speech_ms
                and self.silence * self.window_ms >= self.silence_ms)

    def first_end(self, probs: list[float]) -> int | None:
        """Replayed over a turn's window probabilities: the index of the window that ends it, or None."""
        self.start()
        return next((i for i, p in enumerate(probs) if self.push(p)), None)


def window_probs(audio: torch.Tensor, detector) -> list[float]:
    """The detector's P(speech) for each whole window of ``audio`` (T,) at 16 kHz, in order (offline)."""
    detector.reset()
    w = detector.window
    return [detector(audio[i:i + w]) for i in range(0, len(audio) - w + 1, w)]


def decision_time(window: int, w: int = 512, chunk: int = SAMPLE_RATE * CHUNK_MS // 1000) -> float:
    """Seconds of audio when the rule's decision at ``window`` can be made: when its chunk has arrived."""
    return math.ceil((window + 1) * w / chunk) * chunk / SAMPLE_RATE


# ----------------------------------------------------------------------------- recognition, streamed


def pcm16(x: torch.Tensor) -> bytes:
    return (x.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()


class StreamingRecognizer:
    """pocketsphinx fed as the audio arrives: ``start()``, ``feed`` each chunk (``process_raw``: its first,
    time-synchronous pass runs on the chunk now), ``finish()`` at the end of the turn (``end_utt``) -> words.

    Two settings differ from whole-utterance recognition (``metrics.Transcriber``): the cepstral mean is
    normalised *live* (the whole utterance's mean is not known while it is spoken), starting from ``cmninit``
    (``calibrate_cmn``: the mean of some training audio, "the microphone measured once"; pocketsphinx's default
    start costs many words on flite's voices); and no ``fwdflat`` second pass (at ``end_utt`` it searches the
    whole utterance again, ~165 ms of a 6 s turn on this CPU). Deterministic per turn: ``start`` resets the mean.
    """

    def __init__(self, cmninit: str | None = None, fwdflat: bool = False) -> None:
        from pocketsphinx import Decoder

        kw = {"cmninit": cmninit} if cmninit else {}
        self.decoder = Decoder(cmn="live", fwdflat=fwdflat, loglevel="FATAL", **kw)

    def start(self) -> None:
        self.decoder.reinit_feat()
        self.decoder.start_utt()

    def feed(self, chunk: torch.Tensor) -> None:
        """The next ``chunk`` (T,) of the turn, float at 16 kHz."""
        self.decoder.process_raw(pcm16(chunk), False, False)

    def partial(self) -> str:
        hyp = self.decoder.hyp()
        return metrics.normalize_text(hyp.hypstr) if hyp else ""

    def finish(self) -> str:
        self.decoder.end_utt()
        return self.partial()

    def __call__(self, audio: torch.Tensor, chunk: int = SAMPLE_RATE * CHUNK_MS // 1000) -> str:
        """A whole turn ``audio`` (T,) fed chunk by chunk, untimed -> its words."""
        self.start()
        for i in range(0, len(audio), chunk):
            self.feed(audio[i:i + chunk])
        return self.finish()


def calibrate_cmn(audios: list[torch.Tensor]) -> str:
    """``cmninit`` for ``StreamingRecognizer``: the mean over ``audios`` (each (T,), 16 kHz) of pocketsphinx's
    cepstral mean of each whole utterance, as the comma-separated string it takes."""
    from pocketsphinx import Decoder

    d, means = Decoder(cmn="batch", loglevel="FATAL"), []
    for x in audios:
        d.reinit_feat()
        d.start_utt()
        d.process_raw(pcm16(x), False, True)
        d.end_utt()
        means.append([float(v) for v in d.get_cmn(False).split(",")])
    return ",".join(f"{v:.2f}" for v in np.mean(means, axis=0))


# ----------------------------------------------------------------------------- the reply's first phrase


@dataclass
class PhraseCut:
    """Where the first phrase ends in text written so far (module docstring); ``max_words=None``: sentences only."""

    min_words: int = 3
    max_words: int | None = 8

    def done(self, text: str) -> bool:
        """Whether ``text`` (the reply so far, its last character just written) ends the first phrase."""
        if not text.strip():
            return False
        c, words = text[-1], len(text.split())
        return ((c in SENTENCE_END and len(text.strip()) > 1) or (c in CLAUSE_END and words >= self.min_words)
                or (c == " " and self.max_words is not None and words >= self.max_words))


# ----------------------------------------------------------------------------- one turn, listened to and answered


Writer = Callable[[str, Callable[[str], bool]], None]  # (heard text, on_char) -> None; stops when on_char says so


@dataclass
class ReplySystem:
    """A speech generator under the loop: ``speak(text, user_turn)`` -> its audio chunks, each (T_i,) at 16 kHz.
    ``starts_on``: ``"phrase"`` (it streams: it starts on the first phrase) or ``"reply"`` (the whole text)."""

    name: str
    starts_on: str
    speak: Callable[[str, Segment], Iterator[torch.Tensor]]


@dataclass
class Heard:
    """What the listening half of a turn found; times in seconds on the turn's clock."""

    text: str
    audio: torch.Tensor  # (T,): the user's audio up to the decision (at most the whole of it)
    heard_s: float  # seconds of audio (with the silent tail) that had arrived at the decision
    decision_s: float
    hypothesis_s: float
    decided: bool  # False: the rule never fired; the turn ended with the audio and its silent tail
    probs: list[float] = field(repr=False)
    asr_work: list[tuple[float, float]] = field(repr=False)  # (clock when started, seconds) per recogniser call
    max_lag_ms: float = 0.0  # the most a chunk waited behind the work before it


class Listener:
    """The listening half, pushed one chunk at a time as the audio arrives (``listen`` plays a file; the
    playground's microphone, chapter 12, sends the browser's chunks): per chunk the detector and the rule, then
    the recogniser; ``finish()`` at the end of the turn -> the final hypothesis.

    The recogniser is fed a chunk unless ``asr_tail_ms`` of silence already precede it (the detector gates it, as
    voice agents do: silence waiting for the rule is not decoded); when speech resumes, the chunk skipped last
    is fed first, so an onset the detector saw late is not lost. ``asr_tail_ms=None``: every chunk is fed. The
    default, ``ASR_TAIL_MS``, is ``make bench-loop``'s choice on the valid split's user turns."""

    def __init__(self, detector, recognizer: StreamingRecognizer, rule: EndOfTurn, clock: RealClock | None = None,
                 asr_tail_ms: float | None = ASR_TAIL_MS) -> None:
        self.detector, self.recognizer, self.rule, self.asr_tail_ms = detector, recognizer, rule, asr_tail_ms
        if clock is None:  # nobody times it: a clock of its own
            clock = RealClock()
            clock.start()
        self.clock = clock

    def start(self) -> None:
        """A new turn (the clock is the caller's to start)."""
        self.detector.reset()
        self.rule.start()
        self.recognizer.start()
        self.buf, self.skipped, self.ended = torch.zeros(0), None, False
        self.probs: list[float] = []
        self.work: list[tuple[float, float]] = []  # (clock when started, seconds) per recogniser call
        self.decision_s = 0.0

    def push(self, chunk: torch.Tensor) -> bool:
        """The next ``chunk`` (T,) at 16 kHz -> whether the rule has ended the turn with it."""
        self.buf = torch.cat([self.buf, chunk])
        w = self.detector.window
        while len(self.buf) >= w and not self.ended:
            self.probs.append(self.detector(self.buf[:w]))
            self.buf, self.ended = self.buf[w:], self.rule.push(self.probs[-1])
        self.decision_s = self.clock.now()
        if self.asr_tail_ms is None or self.rule.silence * self.rule.window_ms <= self.asr_tail_ms:
            t = self.clock.now()
            self.recognizer.feed(chunk if self.skipped is None else torch.cat([self.skipped, chunk]))
            self.work.append((t, self.clock.now() - t))
            self.skipped = None
        else:
            self.skipped = chunk
        return self.ended

    def finish(self) -> str:
        """The recogniser's final hypothesis (``end_utt``)."""
        t = self.clock.now()
        text = self.recognizer.finish()
        self.work.append((t, self.clock.now() - t))
        return text


def listen(audio: torch.Tensor, detector, recognizer: StreamingRecognizer, rule: EndOfTurn, clock: RealClock,
           tail_ms: float = 3000.0, asr_tail_ms: float | None = ASR_TAIL_MS) -> Heard:
    """Play ``audio`` (T,) at 16 kHz, then ``tail_ms`` of silence, in ``CHUNK_MS`` chunks, through a ``Listener``
    until the rule ends the turn; then the final hypothesis."""
    x = torch.cat([audio, torch.zeros(round(SAMPLE_RATE * tail_ms / 1000))])
    n = SAMPLE_RATE * CHUNK_MS // 1000
    ear = Listener(detector, recognizer, rule, clock, asr_tail_ms)
    ear.start()
    clock.start()
    lag, end = 0.0, 0
    for end in range(n, len(x) + n, n):
        arrives = min(end, len(x)) / SAMPLE_RATE
        clock.wait_until(arrives)
        lag = max(lag, clock.now() - arrives)
        if ear.push(x[end - n:end]):
            break
    text = ear.finish()
    return Heard(text, audio[:end], min(end, len(x)) / SAMPLE_RATE, ear.decision_s, clock.now(), ear.ended, ear.probs,
                 ear.work, 1000 * lag)


@dataclass
class Timeline:
    """One turn of one system, in ms after the end of the user's speech (``end_of_speech_s`` into their audio)."""

    system: str
    end_of_speech_s: float
    decision_ms: float
    hypothesis_ms: float
    phrase_ms: float  # the LM's first phrase
    text_ms: float  # the text the system starts on: the first phrase, or the whole reply
    first_audio_ms: float
    cut_in: bool  # the rule ended the turn before the end of speech
    decided: bool
    heard: str
    phrase: str
    reply: str
    asr_after_eos_ms: float  # the recogniser's work done after the end of speech (its chunks and end_utt)
    asr_finalise_ms: float  # on the critical path: the decision -> the final hypothesis
    max_lag_ms: float
    reply_audio_s: float

    def ordered(self) -> bool:
        return (self.cut_in or 0 <= self.decision_ms) and (self.decision_ms <= self.hypothesis_ms <= self.phrase_ms
                                                            <= self.text_ms <= self.first_audio_ms)


def answer(heard: Heard, user: Segment, system: ReplySystem, write: Writer, cut: PhraseCut,
           clock: RealClock) -> tuple[dict, list[torch.Tensor]]:
    """The speaking half: the LM's text (streamed, cut), then the system's audio -> clock times and its chunks."""
    chars: list[str] = []
    got: dict = {"phrase": None}

    def on_char(c: str) -> bool:
        chars.append(c)
        if got["phrase"] is None and cut.done("".join(chars)):
            got["phrase"], got["phrase_s"] = "".join(chars).strip(), clock.now()
            return system.starts_on == "phrase"
        return False

    write(heard.text or "yes", on_char)
    got["reply"] = "".join(chars).strip() or "yes."
    got["text_s"] = clock.now()
    if got["phrase"] is None:
        got["phrase"], got["phrase_s"] = got["reply"], got["text_s"]
    stream = system.speak(got["phrase"] if system.starts_on == "phrase" else got["reply"], user)
    chunks = []
    for chunk in stream:
        if chunk.numel():
            chunks.append(chunk)
            break
    got["first_audio_s"] = clock.now()
    chunks += list(stream)  # the rest, untimed: the reply joins the conversation (CSM's Conversation)
    return got, chunks


def take_turn(audio: torch.Tensor, user_speaker: int, system: ReplySystem, write: Writer, detector,
              recognizer: StreamingRecognizer, rule: EndOfTurn, cut: PhraseCut, clock: RealClock,
              eos_s: float | None = None, asr_tail_ms: float | None = ASR_TAIL_MS) -> tuple[Timeline, torch.Tensor]:
    """One user turn ``audio`` (T,) at 16 kHz through the loop to ``system``'s reply -> its timeline and the
    reply's audio (T',). ``eos_s``: the end of speech, if known better than ``end_of_speech`` finds it."""
    eos = end_of_speech(audio, SAMPLE_RATE) if eos_s is None else eos_s
    heard = listen(audio, detector, recognizer, rule, clock, asr_tail_ms=asr_tail_ms)
    user = Segment(user_speaker, heard.text or "yes", heard.audio)
    got, chunks = answer(heard, user, system, write, cut, clock)

    def ms(t: float) -> float:
        return round(1000 * (t - eos), 1)

    line = Timeline(system.name, round(eos, 4), ms(heard.decision_s), ms(heard.hypothesis_s), ms(got["phrase_s"]),
                    ms(got["text_s"]), ms(got["first_audio_s"]), heard.decision_s < eos, heard.decided, heard.text,
                    got["phrase"], got["reply"],
                    round(1000 * sum(s for t, s in heard.asr_work if t >= eos), 1),
                    round(1000 * (heard.hypothesis_s - heard.decision_s), 1), round(heard.max_lag_ms, 1),
                    round(sum(c.numel() for c in chunks) / SAMPLE_RATE, 3))
    return line, torch.cat(chunks) if chunks else torch.zeros(0)
