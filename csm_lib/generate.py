"""Speaking with CSM: ``Segment`` and ``Generator``, the interface of SesameAILabs/csm.

    gen = Generator(model, codec, tokenizer)
    context = [Segment(speaker=0, text="hi there", audio=wav0), Segment(1, "hello", wav1)]
    audio = gen.generate("how are you", speaker=0, context=context, max_audio_length_ms=5_000)
    for chunk in gen.stream("how are you", speaker=0, context=context):  # 80 ms at a time
        play(chunk)

The prompt is the context turns (text and audio, ``frames.py``) followed by the new turn's text.
Then, frame by frame: the backbone's next state gives codebook 0, the audio decoder codebooks
1..K-1 (``CSM.generate_frame``, KV caches in both); the frame is fed back as the next position.
Generation stops at the end-of-speech frame (all zeros) or after ``max_audio_length_ms``.
``generate`` decodes all frames at the end; ``stream`` decodes each frame as it comes with the
codec's causal ``StreamingDecoder``. With the same ``seed`` both sample the same codes.

Context audio is brought to the codec's input level (``audio.normalize_loudness``, -23 dBFS)
before it is encoded, and must be at the codec's sample rate. If the context does not fit the
backbone's window together with the new turn and ``max_audio_length_ms`` of audio, the
**oldest context turns are dropped** (a warning says how many); if the new turn alone does not
fit, that is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from csm_lib import audio as A
from csm_lib import frames as Fr
from csm_lib.backbone import KVCache
from csm_lib.codec import Codec, StreamingDecoder
from csm_lib.model import CSM
from csm_lib.text import N_SPEAKERS, TextTokenizer


@dataclass
class Segment:
    """One turn of a conversation: who spoke, what they said, and how it sounded.

    ``audio`` is mono float ``(T,)`` at ``sample_rate`` (the codec's, 16 kHz here).
    """

    speaker: int
    text: str
    audio: torch.Tensor
    sample_rate: int = A.SAMPLE_RATE


class Generator:
    """Generate speech for a turn, given earlier turns, with a trained ``CSM`` and its codec."""

    def __init__(self, model: CSM, codec: Codec, tokenizer: TextTokenizer):
        cfg = model.cfg
        if (cfg.n_codebooks, cfg.audio_vocab_size) != (codec.cfg.n_q, codec.cfg.codebook_size):
            raise ValueError(f"the model expects {cfg.n_codebooks} codebooks of {cfg.audio_vocab_size}; the codec "
                             f"gives {codec.cfg.n_q} of {codec.cfg.codebook_size}")
        if tokenizer.vocab_size > cfg.text_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens; the model's text vocabulary "
                             f"only {cfg.text_vocab_size}")
        self.model, self.codec, self.tokenizer = model.eval(), codec.eval(), tokenizer
        self.sample_rate = codec.cfg.sample_rate
        self.frame_ms = 1000 / codec.cfg.frame_rate  # 80 ms

    # --- the prompt ---------------------------------------------------------------------------
    def _check_turn(self, text: str, speaker: int) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string: a turn needs words")
        if not (isinstance(speaker, int) and 0 <= speaker < N_SPEAKERS):
            raise ValueError(f"unknown speaker {speaker!r}: speakers are the integers 0..{N_SPEAKERS - 1}")

    @torch.no_grad()
    def segment_frames(self, segment: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        """A context turn -> frames and mask ``(S, K+1)``: its text, its audio codes, end of speech."""
        self._check_turn(segment.text, segment.speaker)
        if segment.sample_rate != self.sample_rate:
            raise ValueError(f"context audio is at {segment.sample_rate} Hz; the codec expects {self.sample_rate} Hz "
                             f"(resample with csm_lib.audio.resample)")
        wav = torch.as_tensor(segment.audio, dtype=torch.float32)
        if wav.dim() != 1 or wav.numel() < self.codec.cfg.samples_per_frame:
            raise ValueError(f"context audio must be mono (T,) with at least one {self.frame_ms:.0f} ms frame, "
                             f"got shape {tuple(wav.shape)}")
        codes = self.codec.encode(A.normalize_loudness(wav)[None])[0]  # (K, F)
        return Fr.concat([self.text_frames(segment.text, segment.speaker), Fr.audio_frames(codes)])

    def text_frames(self, text: str, speaker: int) -> tuple[torch.Tensor, torch.Tensor]:
        return Fr.text_frames(self.tokenizer.encode(text, speaker), self.model.cfg.n_codebooks)

    def prompt(self, text: str, speaker: int, context: list[Segment], max_frames: int):
        """The context turns then the new turn's text, ``(1, S, K+1)`` frames and mask.

        Oldest context turns are dropped until the prompt and ``max_frames`` generated frames fit.
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
        return frames[None], mask[None]

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def frames(self, text: str, speaker: int, context: list[Segment] | None = None,
               max_audio_length_ms: float = 10_000, temperature: float = 0.9, topk: int = 50,
               seed: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the generated frames' codes ``(1, K)`` one at a time, until end of speech."""
        if max_audio_length_ms <= 0:
            raise ValueError(f"max_audio_length_ms must be positive, got {max_audio_length_ms}")
        max_frames = int(max_audio_length_ms // self.frame_ms)
        frames, mask = self.prompt(text, speaker, list(context or []), max_frames)
        p = next(self.model.parameters())
        frames, mask = frames.to(p.device), mask.to(p.device)
        cache = KVCache(self.model.cfg.backbone, 1, max_len=frames.shape[1] + max_frames, dtype=p.dtype,
                        device=p.device)
        generator = torch.Generator(device=p.device).manual_seed(seed) if seed is not None else None
        K = self.model.cfg.n_codebooks
        for _ in range(max_frames):
            codes = self.model.generate_frame(frames, mask, cache, temperature, topk, generator)  # (1, K)
            if Fr.is_end_of_speech(codes).item():
                return
            yield codes
            frames = torch.zeros(1, 1, K + 1, dtype=torch.long, device=p.device)
            frames[0, 0, :K] = codes[0]
            mask = torch.zeros_like(frames, dtype=torch.bool)
            mask[0, 0, :K] = True

    def generate(self, text: str, speaker: int, context: list[Segment] | None = None,
                 max_audio_length_ms: float = 10_000, temperature: float = 0.9, topk: int = 50,
                 seed: int | None = None) -> torch.Tensor:
        """The whole turn's audio ``(T,)`` at ``self.sample_rate`` (empty if it ends at once)."""
        codes = list(self.frames(text, speaker, context, max_audio_length_ms, temperature, topk, seed))
        if not codes:
            return torch.zeros(0)
        return self.codec.decode(torch.stack(codes, dim=-1).cpu())[0]  # (1, K, F) -> (T,)

    def stream(self, text: str, speaker: int, context: list[Segment] | None = None,
               max_audio_length_ms: float = 10_000, temperature: float = 0.9, topk: int = 50,
               seed: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the turn's audio as it is generated: one chunk ``(n,)`` per frame, then the last 30 ms.

        The concatenated chunks equal ``generate``'s audio for the same arguments and seed.
        """
        decoder = StreamingDecoder(self.codec, batch_size=1)
        any_frame = False
        for codes in self.frames(text, speaker, context, max_audio_length_ms, temperature, topk, seed):
            any_frame = True
            yield decoder.push(codes[..., None].cpu())[0]
        if any_frame:
            yield decoder.flush()[0]
