"""Speaking with CSM: ``Segment`` and ``Generator``, the interface of SesameAILabs/csm.

    gen = load_generator()  # the shipped reference model, its tokenizer and its codec
    context = [Segment(speaker=0, text="hi there", audio=wav0), Segment(1, "hello", wav1)]
    audio = gen.generate("how are you", speaker=0, context=context, max_audio_length_ms=5_000)
    for chunk in gen.stream("how are you", speaker=0, context=context):  # 80 ms at a time
        play(chunk)

``load_generator(model=..., codec=..., device=...)`` loads any trained checkpoint the same way
and refuses a codec other than the one the model was trained with; ``Generator(model, codec,
tokenizer)`` assembles one from objects. The loaders of trained checkpoints live here, with
inference: ``load_model`` (a CSM and its sidecar), ``tokenizer_path`` (its text vocabulary, next
to it) and ``load_codec``.

The prompt is the context turns (text and audio, ``frames.py``) followed by the new turn's text.
Then, frame by frame: the backbone's next state gives codebook 0, the audio decoder codebooks
1..K-1 (``CSM.generate_frame`` defines the step; ``inference.FastCSM`` computes it, same codes,
with fused weights and reused caches); the frame is fed back as the next position.
Generation stops at the end-of-speech frame (all zeros) or after ``max_audio_length_ms``.
``generate`` decodes all frames at the end; ``stream`` decodes chunks of frames as they come with
the codec's causal ``StreamingDecoder`` (``chunk_sizes``: a first chunk, doubling up to
``chunk_frames``). With the same ``seed`` both sample the same codes. A ``Conversation`` keeps the
backbone's cache between turns, so a new turn only prefills its own text.

Context audio is brought to the codec's input level (``audio.normalize_loudness``, -23 dBFS)
before it is encoded, and must be at the codec's sample rate. If the context does not fit the
backbone's window together with the new turn and ``max_audio_length_ms`` of audio, the
**oldest context turns are dropped** (a warning says how many); if the new turn alone does not
fit, that is an error. A prompt longer than the windows the model was *trained* on (often
shorter than the backbone's window) is allowed, with a warning.

Bad input is refused with a ``ValueError`` that says what was expected (``Generator.check_audio``
lists what can and cannot be checked about context audio).

Explained in chapter 08 (``notebooks/08_inference.ipynb``); chapter 06 builds its prompts.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from csm_lib import audio as A
from csm_lib import checkpoint
from csm_lib import frames as Fr
from csm_lib.backbone import TransformerConfig
from csm_lib.codec import Codec, CodecConfig, StreamingDecoder
from csm_lib.dataset import fingerprint
from csm_lib.inference import FastCSM, LayerCache
from csm_lib.model import CSM, CSMConfig
from csm_lib.outputs import REPO
from csm_lib.seed_model import SeedCSM
from csm_lib.text import N_SPEAKERS, AnyTokenizer, load_tokenizer

REFERENCE_MODEL = REPO / "checkpoints" / "csm_reference.safetensors"  # from the repository root: the
REFERENCE_CODEC = REPO / "checkpoints" / "codec_reference.safetensors"  # defaults work from notebooks/ too
CORPUS_SPEAKERS = 2  # data.py's conversations: speaker ids 0 and 1

# plausible context audio (Generator.check_audio): generous bounds, far outside real speech
SILENCE_PEAK = 1e-4  # peak amplitude below this (-80 dBFS) is silence
MIN_S_PER_CHAR, MAX_S_PER_CHAR = 0.01, 1.5  # flite: 0.06-0.08 s per character, 0.4 s for "ok"
MIN_TEMPERATURE = 0.01  # below it (but above 0: greedy), logits / temperature can overflow (chapter 11's fuzz)
# The sampling temperature `make model-eval` chose for the reference model on validation turns: the lowest WER
# among temperatures whose turns end by themselves (results/temperature_sweep.json; tests/test_generate.py keeps
# the two in agreement). load_generator() samples the reference at it by default, and so do the playground and
# the server; a Generator built by hand samples at Sesame's default, SESAME_TEMPERATURE, unless told otherwise.
REFERENCE_TEMPERATURE = 0.3
SESAME_TEMPERATURE = 0.9  # SesameAILabs/csm's generate(temperature=0.9)


@dataclass
class Segment:
    """One turn of a conversation: who spoke, what they said, and how it sounded.

    ``audio`` is mono float ``(T,)`` at ``sample_rate`` (the codec's, 16 kHz here). A turn whose
    codec codes are already known (one the model generated) may give ``codes`` ``(K, F)``
    instead: they are used as they are, and the codec is skipped.
    """

    speaker: int
    text: str
    audio: torch.Tensor | None = None
    sample_rate: int = A.SAMPLE_RATE
    codes: torch.Tensor | None = None


class Generator:
    """Generate speech for a turn, given earlier turns, with a trained ``CSM`` and its codec.

    ``n_speakers``: the speaker ids the model was trained with are ``0..n_speakers-1`` (the
    tokenizer has ``text.N_SPEAKERS`` prefixes, but untrained ones are noise to the model).
    ``trained_len``: the positions per window the model was trained on (``TrainConfig.max_len``);
    a longer prompt gets a warning. ``load_generator`` reads both from the checkpoint's sidecar.
    ``temperature``: the sampling temperature of every method whose ``temperature`` is left at None
    (``load_generator`` gives the reference the one chosen for it on validation turns).
    """

    def __init__(self, model: CSM, codec: Codec, tokenizer: AnyTokenizer, n_speakers: int = N_SPEAKERS,
                 trained_len: int | None = None, temperature: float = SESAME_TEMPERATURE):
        cfg = model.cfg
        if (cfg.n_codebooks, cfg.audio_vocab_size) != (codec.cfg.n_q, codec.cfg.codebook_size):
            raise ValueError(f"the model expects {cfg.n_codebooks} codebooks of {cfg.audio_vocab_size}; the codec "
                             f"gives {codec.cfg.n_q} of {codec.cfg.codebook_size}")
        if tokenizer.vocab_size > cfg.text_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens; the model's text vocabulary "
                             f"only {cfg.text_vocab_size}")
        if not 1 <= n_speakers <= N_SPEAKERS:
            raise ValueError(f"n_speakers must be in 1..{N_SPEAKERS} (the tokenizer's speaker prefixes), "
                             f"got {n_speakers}")
        self.model, self.codec, self.tokenizer = model.eval(), codec.eval(), tokenizer
        self.n_speakers, self.trained_len = n_speakers, trained_len
        self.sample_rate = codec.cfg.sample_rate
        self.frame_ms = 1000 / codec.cfg.frame_rate  # 80 ms
        self._check_sampling(self.frame_ms, temperature, 1)
        self.temperature = temperature
        # the fast path (inference.py): a snapshot of the weights; the seed's variants have none (seed_model.py)
        self.fast = None if isinstance(model, SeedCSM) else FastCSM(self.model)

    def refresh(self) -> None:
        """Rebuild the fast path from the model's current weights (after training it further), compiled
        again if it was."""
        if self.fast is not None:
            compiled = self.fast.compiled_frame is not None
            self.fast = FastCSM(self.model, self.fast.attention)
            if compiled:
                self.fast.compile()

    # --- the prompt ---------------------------------------------------------------------------
    def _check_turn(self, text: str, speaker: int) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string: a turn needs words")
        if not (isinstance(speaker, int) and 0 <= speaker < self.n_speakers):
            raise ValueError(f"unknown speaker {speaker!r}: the model was trained with the integer speakers "
                             f"0..{self.n_speakers - 1}")

    def check_audio(self, segment: Segment, wav: torch.Tensor) -> None:
        """Refuse context audio ``(T,)`` that cannot be speech of ``segment.text``; warn if it is unlikely.

        Checked: every sample is finite; the audio is not silent (peak at least ``SILENCE_PEAK``,
        -80 dBFS); its duration is within ``MIN_S_PER_CHAR``..``MAX_S_PER_CHAR`` seconds per
        character of the text (10 ms to 1.5 s; flite's sentences take 60-80 ms, a lone "ok" 0.4 s),
        else a warning: such audio is hardly this text spoken (a wrong clip, a whole conversation,
        a fragment).
        Not checkable: the true sample rate. Samples carry no rate, and ``Segment.sample_rate`` is
        only what the caller says; 24 or 48 kHz audio passed as 16 kHz is slower and lower speech,
        but plausible speech, and it passes (resample with ``audio.resample`` first).
        """
        where = f"context audio of speaker {segment.speaker} ({segment.text[:40]!r})"
        if not torch.isfinite(wav).all():
            raise ValueError(f"{where} contains NaN or infinite samples: expected finite float samples in [-1, 1]")
        peak = float(wav.abs().max())
        if peak < SILENCE_PEAK:
            raise ValueError(f"{where} is silent (peak {peak:.1e}): expected speech, peak at least {SILENCE_PEAK:g}")
        per_char = wav.numel() / self.sample_rate / len(segment.text.strip())
        if not MIN_S_PER_CHAR <= per_char <= MAX_S_PER_CHAR:
            warnings.warn(f"{where} lasts {wav.numel() / self.sample_rate:.2f} s, {per_char:.3f} s per character of "
                          f"its text: expected {MIN_S_PER_CHAR}..{MAX_S_PER_CHAR} s (is it this text, at "
                          f"{self.sample_rate} Hz?)", stacklevel=3)

    def check_codes(self, segment: Segment) -> torch.Tensor:
        """A segment's ``codes``, checked: integers ``(K, F)`` with F >= 1, each in ``0..V-1``."""
        codes, cfg = torch.as_tensor(segment.codes), self.model.cfg
        K, V = cfg.n_codebooks, cfg.audio_vocab_size
        if codes.dim() != 2 or codes.shape[0] != K or codes.shape[1] < 1 or codes.is_floating_point():
            raise ValueError(f"codes of speaker {segment.speaker}'s turn must be integers (K={K}, F>=1), got "
                             f"{codes.dtype} {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= V:
            raise ValueError(f"codes of speaker {segment.speaker}'s turn must lie in 0..{V - 1}, got "
                             f"{int(codes.min())}..{int(codes.max())}")
        return codes.long()

    @torch.no_grad()
    def segment_frames(self, segment: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        """A context turn -> frames and mask ``(S, K+1)``: its text, its audio codes, end of speech."""
        self._check_turn(segment.text, segment.speaker)
        if segment.codes is not None:
            codes = self.check_codes(segment)
            return Fr.concat([self.text_frames(segment.text, segment.speaker), Fr.audio_frames(codes)])
        if segment.audio is None:
            raise ValueError(f"speaker {segment.speaker}'s turn has neither audio nor codes: a context turn needs one")
        if segment.sample_rate != self.sample_rate:
            raise ValueError(f"context audio is at {segment.sample_rate} Hz; the codec expects {self.sample_rate} Hz "
                             f"(resample with csm_lib.audio.resample)")
        wav = torch.as_tensor(segment.audio, dtype=torch.float32)
        if wav.dim() != 1 or wav.numel() < self.codec.cfg.samples_per_frame:
            raise ValueError(f"context audio must be mono (T,) with at least one {self.frame_ms:.0f} ms frame, "
                             f"got shape {tuple(wav.shape)}")
        self.check_audio(segment, wav)
        codes = self.codec.encode(A.normalize_loudness(wav)[None])[0]  # (K, F)
        return Fr.concat([self.text_frames(segment.text, segment.speaker), Fr.audio_frames(codes)])

    def text_frames(self, text: str, speaker: int) -> tuple[torch.Tensor, torch.Tensor]:
        return Fr.text_frames(self.tokenizer.encode(text, speaker), self.model.cfg.n_codebooks)

    def prompt(self, text: str, speaker: int, context: list[Segment], max_frames: int):
        """The context turns then the new turn's text, ``(1, S, K+1)`` frames and mask.

        Oldest context turns are dropped until the prompt and ``max_frames`` generated frames fit
        the backbone's window; a prompt longer than ``trained_len`` only gets a warning.
        """
        self._check_turn(text, speaker)
        turn = self.text_frames(text, speaker)
        window = self.model.cfg.backbone.max_seq_len
        if len(turn[0]) + max_frames > window:
            raise ValueError(f"the turn's {len(turn[0])} text tokens and {max_frames} audio frames do not fit the "
                             f"model's window of {window} positions: shorten the text or max_audio_length_ms")
        parts = [self.segment_frames(s) for s in context]
        dropped = 0
        while parts and sum(len(f) for f, _ in parts) + len(turn[0]) + max_frames > window:
            parts.pop(0)
            dropped += 1
        if dropped:
            warnings.warn(f"context too long for the {window}-position window: dropped the {dropped} oldest of "
                          f"{len(context)} turns", stacklevel=3)
        frames, mask = Fr.concat([*parts, turn])
        if self.trained_len and len(frames) > self.trained_len:
            warnings.warn(f"the prompt is {len(frames)} positions; the model was trained on windows of "
                          f"{self.trained_len}: the positions past that are untrained (expect worse speech; "
                          f"shorten the context)", stacklevel=3)
        return frames[None], mask[None]

    # --- generation ---------------------------------------------------------------------------
    def _check_sampling(self, max_audio_length_ms: float, temperature: float, topk: int) -> None:
        if not max_audio_length_ms >= self.frame_ms:
            raise ValueError(f"max_audio_length_ms must be at least one frame ({self.frame_ms:.0f} ms), "
                             f"got {max_audio_length_ms}")
        if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
            raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE} (logits divided "
                             f"by less overflow to inf), got {temperature}")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1 (1: greedy), got {topk!r}")

    def frames(self, text: str, speaker: int, context: list[Segment] | None = None,
               max_audio_length_ms: float = 10_000, temperature: float | None = None, topk: int = 50,
               seed: int | None = None, stop_at_end: bool = True) -> Iterator[torch.Tensor]:
        """Yield the generated frames' codes ``(1, K)`` one at a time, until end of speech.

        Stateless: the context is laid out and run through the backbone on every call (a
        ``Conversation`` keeps it instead). ``stop_at_end=False`` goes on to ``max_audio_length_ms``
        (a fixed length, for benchmarks): an end-of-speech frame is then yielded like any other.
        ``temperature=None``: ``self.temperature``.
        """
        temperature = self.temperature if temperature is None else temperature
        self._check_sampling(max_audio_length_ms, temperature, topk)
        max_frames = int(max_audio_length_ms // self.frame_ms)
        frames, mask = self.prompt(text, speaker, list(context or []), max_frames)
        if self.fast is None:  # a SeedCSM: the whole sequence again for every frame
            yield from self.model.frames(frames, mask, max_frames, temperature, topk, seed, stop_at_end)
            return
        cache = self.fast.new_cache(1, frames.shape[1] + max_frames)
        h = self.fast.prefill(frames.to(cache.device), mask.to(cache.device), cache)
        yield from self.continue_frames(h, cache, max_frames, temperature, topk, seed, stop_at_end)

    def continue_frames(self, h: torch.Tensor, cache: LayerCache, max_frames: int, temperature: float, topk: int,
                        seed: int | None, stop_at_end: bool = True) -> Iterator[torch.Tensor]:
        """Frames after backbone state ``h`` (1, D), each fed back into ``cache`` before the next is drawn.

        The last frame yielded is *not* fed (nothing follows it); nor is an end-of-speech frame.
        """
        generator = torch.Generator(device=h.device).manual_seed(seed) if seed is not None else None
        codes = None
        for _ in range(max_frames):
            if codes is not None:
                h = self.fast.feed(codes, cache)
            codes = self.fast.frame(h, temperature, topk, generator)  # (1, K)
            if stop_at_end and Fr.is_end_of_speech(codes).item():
                return
            yield codes

    def generate(self, text: str, speaker: int, context: list[Segment] | None = None,
                 max_audio_length_ms: float = 10_000, temperature: float | None = None, topk: int = 50,
                 seed: int | None = None) -> torch.Tensor:
        """The whole turn's audio ``(T,)`` at ``self.sample_rate`` (empty if it ends at once)."""
        return self.decode(list(self.frames(text, speaker, context, max_audio_length_ms, temperature, topk, seed)))

    def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Frames' codes, each ``(1, K)``, as audio ``(T,)`` (empty for no frame)."""
        if not codes:
            return torch.zeros(0)
        return self.codec.decode(torch.stack(codes, dim=-1).cpu())[0]  # (1, K, F) -> (T,)

    def stream(self, text: str, speaker: int, context: list[Segment] | None = None,
               max_audio_length_ms: float = 10_000, temperature: float | None = None, topk: int = 50,
               seed: int | None = None, chunk_frames: int = 1, stop_at_end: bool = True,
               first_chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the turn's audio as it is generated, in chunks of ``chunk_sizes(chunk_frames,
        first_chunk_frames)`` frames (80 ms each), then the last 30 ms.

        The concatenated chunks equal ``generate``'s audio for the same arguments and seed.
        """
        codes = self.frames(text, speaker, context, max_audio_length_ms, temperature, topk, seed, stop_at_end)
        yield from self.stream_codes(codes, chunk_frames, first_chunk_frames)

    def stream_codes(self, codes: Iterator[torch.Tensor], chunk_frames: int = 1,
                     first_chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """Frames' codes ``(1, K)`` as they come -> audio chunks, through the codec's causal decoder."""
        sizes = chunk_sizes(chunk_frames, first_chunk_frames)
        decoder = StreamingDecoder(self.codec, batch_size=1)
        pending, any_frame, size = [], False, next(sizes)
        for c in codes:
            pending.append(c.cpu())
            if len(pending) == size:
                yield decoder.push(torch.stack(pending, dim=-1))[0]  # (1, K, n) -> (n * spf,)
                pending, any_frame, size = [], True, next(sizes)
        if pending:
            yield decoder.push(torch.stack(pending, dim=-1))[0]
        if pending or any_frame:
            yield decoder.flush()[0]

    def compile(self) -> Generator:
        """``torch.compile`` the work of each frame (``FastCSM.compile``: its decoding and its pass back
        through the backbone) and the codec's streaming decoder (``Codec.compile_streaming``): same
        codes, same audio within float rounding, less time per frame (chapter 08). The first frame of
        each sampling setting, and the first pushes, compile (a minute or two)."""
        if self.fast is None:
            raise ValueError("the seed's variants (SeedCSM) have no fast path to compile")
        self.fast.compile()
        self.codec.compile_streaming()
        return self


def chunk_sizes(chunk_frames: int = 1, first_chunk_frames: int | None = None) -> Iterator[int]:
    """Frames per chunk of a stream: ``first_chunk_frames`` (default ``chunk_frames``), doubling up to
    ``chunk_frames``, which then repeats: ``(8, 1)`` -> 1, 2, 4, 8, 8, ...

    A small first chunk is heard early; bigger later chunks spread the codec decoder's fixed cost
    per call over more frames (a lower real-time factor). Doubling keeps each chunk at most as long
    as the audio already sent, so it is ready before that has played whenever a frame takes less
    than half its 80 ms to make (``as_heard`` counts the stalls).
    """
    first = chunk_frames if first_chunk_frames is None else first_chunk_frames
    for name, n in (("chunk_frames", chunk_frames), ("first_chunk_frames", first)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    if first > chunk_frames:
        raise ValueError(f"first_chunk_frames ({first}) must not exceed chunk_frames ({chunk_frames})")
    size = first
    while True:
        yield size
        size = min(2 * size, chunk_frames)


def as_heard(chunks: Iterable[torch.Tensor], sr: int) -> tuple[torch.Tensor, dict]:
    """Play a stream of audio chunks as a listener hears it from the moment of the call.

    Each chunk is timed as it arrives; playback starts with the first chunk and a chunk that is
    not there when the one before has finished playing leaves a gap (a stall). Returns the audio
    with those silences ``(T,)`` (the wait for the first chunk first) and
    ``{"first_audio_ms", "last_audio_ms", "stall_ms", "stalls", "audio_s"}`` (``last_audio_ms``: the
    last chunk's arrival, the stream's whole time).
    """
    t0, arrivals = time.perf_counter(), []
    for chunk in chunks:
        arrivals.append((time.perf_counter() - t0, chunk))
    if not arrivals:
        return torch.zeros(0), {"first_audio_ms": None, "last_audio_ms": None, "stall_ms": 0.0, "stalls": 0,
                                "audio_s": 0.0}
    parts, clock, stall, stalls = [], 0.0, 0.0, 0  # clock: when the audio written so far ends playing (s)
    for t, chunk in arrivals:
        if t > clock:  # nothing to play until this chunk arrives
            parts.append(torch.zeros(round((t - clock) * sr)))
            if clock > 0:
                stall, stalls = stall + (t - clock), stalls + 1
            clock = t
        parts.append(chunk)
        clock += chunk.numel() / sr
    audio_s = sum(c.numel() for _, c in arrivals) / sr
    return torch.cat(parts), {"first_audio_ms": 1000 * arrivals[0][0], "last_audio_ms": 1000 * arrivals[-1][0],
                              "stall_ms": 1000 * stall, "stalls": stalls, "audio_s": audio_s}


class Conversation:
    """A conversation that keeps its state: the backbone's KV cache over every turn so far.

        conv = Conversation(gen)
        conv.add(Segment(0, "hi there", wav0))   # laid out and run through the backbone once
        reply = conv.generate("hello", speaker=1)  # prefills only the new text; the reply joins
        more = conv.generate("how are you", speaker=0)

    Stateless ``Generator.generate(text, speaker, context)`` encodes every context turn with the
    codec and runs the backbone over the whole conversation on every call. A Conversation does
    each once: ``add`` runs a turn into the cache, and a generated turn joins the conversation as
    its codes (``Segment(codes=...)``, no codec round trip). Same codes as the stateless path
    given the same turns as context and the same seed. When a turn would overflow the backbone's
    window, the oldest turns are dropped and the rest run through again (with a warning), as the
    stateless path drops them.
    """

    def __init__(self, gen: Generator):
        if gen.fast is None:
            raise ValueError("a Conversation keeps the fast path's KV cache; the seed's variants (SeedCSM) have "
                             "none: use Generator.frames with the earlier turns as context")
        self.gen = gen
        self.window = gen.model.cfg.backbone.max_seq_len
        self.cache = gen.fast.new_cache(1, self.window)
        self.turns: list[Segment] = []
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # each turn laid out, (S_i, K+1) frames and mask

    @property
    def positions(self) -> int:
        return self.cache.length

    def _run(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.gen.fast.prefill(frames[None].to(self.cache.device), mask[None].to(self.cache.device),
                                     self.cache)

    def add(self, segment: Segment) -> None:
        """A context turn (audio or codes) joins the conversation."""
        frames, mask = self.gen.segment_frames(segment)
        self._make_room(len(frames))
        self._run(frames, mask)
        self.turns.append(segment)
        self.parts.append((frames, mask))

    def _make_room(self, needed: int) -> None:
        """Drop the oldest turns until ``needed`` more positions fit the window; run the rest again."""
        if needed > self.window:
            raise ValueError(f"{needed} positions do not fit the model's window of {self.window}")
        dropped = 0
        while self.turns and sum(len(f) for f, _ in self.parts) + needed > self.window:
            self.turns.pop(0)
            self.parts.pop(0)
            dropped += 1
        if dropped:
            warnings.warn(f"conversation too long for the {self.window}-position window: dropped its {dropped} "
                          f"oldest turns", stacklevel=4)
            self.cache.reset()
            if self.turns:
                self._run(*Fr.concat(self.parts))

    def frames(self, text: str, speaker: int, max_audio_length_ms: float = 10_000, temperature: float | None = None,
               topk: int = 50, seed: int | None = None, stop_at_end: bool = True) -> Iterator[torch.Tensor]:
        """Yield the next turn's codes ``(1, K)``; when it ends (or the caller stops), it joins the conversation.

        Room is made for the turn's text, ``max_audio_length_ms`` of frames and its end-of-speech
        frame: one position more than the stateless path needs.
        """
        gen = self.gen
        temperature = gen.temperature if temperature is None else temperature
        gen._check_sampling(max_audio_length_ms, temperature, topk)
        max_frames = int(max_audio_length_ms // gen.frame_ms)
        h, turn = self.start_turn(text, speaker, max_frames)
        generated: list[torch.Tensor] = []
        try:
            for codes in gen.continue_frames(h, self.cache, max_frames, temperature, topk, seed, stop_at_end):
                generated.append(codes)
                yield codes
        finally:
            self.end_turn(turn, generated)

    def start_turn(self, text: str, speaker: int, max_frames: int) -> tuple[torch.Tensor, dict]:
        """Prefill a new turn's text -> the backbone state ``(1, D)`` to draw its first frame from, and
        what ``end_turn`` needs. The frames after it are drawn and fed by the caller (``frames``, or a
        server batching several streams), into ``self.cache``."""
        self.gen._check_turn(text, speaker)
        frames, mask = self.gen.text_frames(text, speaker)
        self._make_room(len(frames) + max_frames + 1)
        start = self.cache.length
        return self._run(frames, mask), {"text": text, "speaker": speaker, "start": start, "frames": (frames, mask)}

    def end_turn(self, turn: dict, generated: list[torch.Tensor]) -> None:
        """The turn of ``start_turn``, with the frames ``generated`` for it (each ``(1, K)``), joins the
        conversation as ``Segment(codes=...)`` lays it out: its text, its frames, end of speech."""
        gen, (frames, mask) = self.gen, turn["frames"]
        end_of_speech = torch.zeros(1, gen.model.cfg.n_codebooks, dtype=torch.long, device=self.cache.device)
        fed = self.cache.length - turn["start"] - len(frames)
        for codes in [*generated[fed:], end_of_speech]:
            gen.fast.feed(codes, self.cache)  # those not fed yet
        codes = torch.cat([*generated, end_of_speech]).T.cpu()  # (K, F + 1)
        audio = Fr.audio_frames(codes, end_of_speech=False)
        self.turns.append(Segment(turn["speaker"], turn["text"], codes=codes[:, :-1] if generated else None))
        self.parts.append(Fr.concat([(frames, mask), audio]))

    def generate(self, text: str, speaker: int, max_audio_length_ms: float = 10_000, temperature: float | None = None,
                 topk: int = 50, seed: int | None = None) -> torch.Tensor:
        """The next turn's audio ``(T,)``; the turn joins the conversation."""
        return self.gen.decode(list(self.frames(text, speaker, max_audio_length_ms, temperature, topk, seed)))

    def stream(self, text: str, speaker: int, max_audio_length_ms: float = 10_000, temperature: float | None = None,
               topk: int = 50, seed: int | None = None, chunk_frames: int = 1,
               stop_at_end: bool = True, first_chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """The next turn's audio in chunks, as ``Generator.stream``."""
        codes = self.frames(text, speaker, max_audio_length_ms, temperature, topk, seed, stop_at_end)
        yield from self.gen.stream_codes(codes, chunk_frames, first_chunk_frames)


# --- loading trained checkpoints ---------------------------------------------------------------
def tokenizer_path(model_path: str | Path) -> Path:
    """Where a model checkpoint's tokenizer lives: ``name.safetensors`` -> ``name.tokenizer.json``."""
    return Path(model_path).with_suffix(".tokenizer.json")


def load_model(path: str | Path, device: str = "cpu") -> tuple[CSM, dict]:
    """A trained CSM in eval mode and its sidecar metadata (from ``model.safetensors`` or a ``state-*``)."""
    state, meta = checkpoint.load(path)
    if meta.get("kind") != "csm":
        raise ValueError(f"{path} is not a CSM checkpoint (kind={meta.get('kind')!r})")
    c = dict(meta["config"])
    c["backbone"], c["decoder"] = (TransformerConfig(**{**c[k], "rope_scaling": tuple(c[k]["rope_scaling"])
                                                         if c[k].get("rope_scaling") else None})
                                   for k in ("backbone", "decoder"))
    variant = (meta.get("train") or {}).get("variant")
    model = SeedCSM(CSMConfig(**c), variant) if variant else CSM(CSMConfig(**c))
    if any(k.startswith("model.") for k in state):  # a training state: weights and optimizer moments
        state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval(), meta


def load_codec(path: str | Path, device: str = "cpu") -> tuple[Codec, dict]:
    """A trained codec in eval mode, and its sidecar metadata."""
    state, meta = checkpoint.load(path)
    if meta.get("kind") != "codec":
        raise ValueError(f"{path} is not a codec checkpoint (kind={meta.get('kind')!r})")
    model = Codec(CodecConfig(**meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def trained_speakers(meta: dict) -> int:
    """How many speaker ids (``0..n-1``) a CSM checkpoint was trained with, from its sidecar.

    ``train.py`` records it (``data.n_speakers``); checkpoints written before it did (the shipped
    reference among them) name this workbook's corpus (``data.corpus_config``), whose
    conversations have ``CORPUS_SPEAKERS``; a checkpoint recording neither (one converted from
    csm-1b) gets every id the tokenizer has, ``text.N_SPEAKERS``.
    """
    info = meta.get("data") or {}
    if "n_speakers" in info:
        return int(info["n_speakers"])
    return CORPUS_SPEAKERS if "corpus_config" in info else N_SPEAKERS


def check_codec(meta: dict, codec_path: str | Path) -> None:
    """Refuse a codec other than the one the model of sidecar ``meta`` was trained with (by file content)."""
    info = meta.get("data") or {}
    expected, given = info.get("codec_fingerprint"), fingerprint(codec_path)
    if expected is None:
        warnings.warn(f"the model records no codec fingerprint: cannot check that {codec_path} is its codec",
                      stacklevel=3)
    elif expected != given:
        raise ValueError(f"the model was trained with the codec {info.get('codec')} (fingerprint {expected}); the "
                         f"codec given, {codec_path}, has fingerprint {given}: pass the codec the model was "
                         f"trained with")


def load_generator(model: str | Path = REFERENCE_MODEL, codec: str | Path = REFERENCE_CODEC,
                   device: str = "cpu") -> Generator:
    """A ``Generator`` from checkpoints: the model (on ``device``), its tokenizer and codec (on the CPU).

    The defaults are the reference model and codec shipped in ``checkpoints/``, sampled at the temperature
    chosen for it (``REFERENCE_TEMPERATURE``; a model whose sidecar records a ``temperature``, such as
    one fine-tuned from it (``finetune.py``), at that; any other at ``SESAME_TEMPERATURE``). The codec must be
    the one the model was trained with (``check_codec``); the speakers and prompt length the model
    was trained with come from its sidecar (``trained_speakers``, ``train.max_len``).
    """
    csm, meta = load_model(model, device)
    check_codec(meta, codec)
    tok = tokenizer_path(model)
    if not tok.exists():
        raise FileNotFoundError(f"the model's tokenizer {tok} is missing (train.py writes it beside the model)")
    trained_len = (meta.get("train") or {}).get("max_len")
    reference = Path(model).resolve() == REFERENCE_MODEL.resolve()
    temperature = meta.get("temperature") or (REFERENCE_TEMPERATURE if reference else SESAME_TEMPERATURE)
    return Generator(csm, load_codec(codec)[0], load_tokenizer(tok), n_speakers=trained_speakers(meta),
                     trained_len=trained_len, temperature=temperature)
