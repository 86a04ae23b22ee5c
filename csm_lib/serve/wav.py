"""Audio in and out of the server (chapter 11): a context turn's base64 WAV checked and decoded, and the
reply as 16-bit PCM with a WAV header (streamed: an open-ended one).

A context turn's audio is checked in the order of what it costs, and refused (422, saying what was
wrong and what is expected) at the first check it fails:

1. its size: the base64 texts of a request no longer than the largest WAVs its duration limit allows
   (``len``, before anything is decoded);
2. its header: a RIFF/WAVE file (the first 12 bytes), then ``sf.info``: one of ``FORMATS``' encodings,
   mono, at the codec's sample rate; the frames of all turns together within the duration limit;
3. only then, every header passed, its samples (``sf.read``): finite.

A compressed file (FLAC, Ogg...) is refused at step 2: 485 KB of FLAC can hold two hours of constant
audio, 460 MB once decoded. A WAV's samples are stored as they are, so a WAV that passes step 2 decodes
to at most twice its own size. The server runs steps 2 and 3 in a thread, after the request is admitted.
"""

from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np
import soundfile as sf

from csm_lib.audio import wav_bytes
from csm_lib.serve.schema import APIError

# the WAV encodings the API accepts (libsndfile's subtype names) -> bytes per sample
FORMATS = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4}
ACCEPTED = "a mono WAV file (RIFF/WAVE: 16-, 24- or 32-bit PCM, or 32-bit float)"
HEADER_BYTES = 4096  # room for a WAV's chunks besides its samples (fmt, fact, LIST...)
UNKNOWN_LENGTH = 0xFFFFFFFF  # a WAV header's size field when the length is not known yet (a stream)


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples ``(T,)`` in [-1, 1] -> 16-bit little-endian PCM bytes (clipped)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, n_bytes: int | None = None) -> bytes:
    """A 44-byte WAV header for 16-bit mono PCM of ``n_bytes`` bytes.

    ``n_bytes=None``: a stream, whose length is not known when its header leaves. Its size fields say
    so with the largest value (``UNKNOWN_LENGTH``, as streaming encoders write it): read such a WAV to the
    end of the stream, never to the announced length. The stream's end tells whether it is complete
    (README, "Serving": a cut stream is aborted, not ended).
    """
    riff, data = (UNKNOWN_LENGTH, UNKNOWN_LENGTH) if n_bytes is None else (36 + n_bytes, n_bytes)
    return (b"RIFF" + riff.to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + sample_rate.to_bytes(4, "little")
            + (sample_rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + data.to_bytes(4, "little"))


def encode_wav(audio: np.ndarray, sample_rate: int) -> str:
    """Float samples ``(T,)`` -> base64 of a 16-bit WAV file (for a request's ``context``)."""
    return base64.b64encode(wav_bytes(audio, sample_rate)).decode()


def max_b64_chars(seconds: float, sample_rate: int, files: int = 1) -> int:
    """The longest base64 text that ``files`` accepted WAVs of ``seconds`` in all can take (32-bit samples)."""
    return 4 * math.ceil((files * HEADER_BYTES + math.ceil(seconds * sample_rate) * max(FORMATS.values())) / 3)


def check_sizes(audios: list[str], seconds: float, sample_rate: int) -> None:
    """Step 1: 422 when the base64 texts are longer than accepted WAVs of ``seconds`` in all can be."""
    longest = max_b64_chars(seconds, sample_rate, len(audios))
    if sum(len(a) for a in audios) > longest:
        raise APIError(422, f"context audio is {sum(len(a) for a in audios):,} characters of base64, more than "
                            f"{len(audios)} WAV file(s) of {seconds:g} s in all can take ({longest:,}); this "
                            f"server takes at most {seconds:g} s of context audio")


def check_header(raw: bytes, sample_rate: int, where: str) -> sf._SoundFileInfo:
    """Step 2: the file's header, read without decoding its samples -> ``sf.info``; 422 if not acceptable."""
    expected = f"expected {ACCEPTED} at {sample_rate} Hz, base64-encoded"
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        kind = next((name for magic, name in ((b"fLaC", "a FLAC file"), (b"OggS", "an Ogg file"),
                                              (b"ID3", "an MP3 file"), (b"FORM", "an AIFF file"),
                                              (b"RF64", "an RF64 file")) if raw.startswith(magic)), "not a WAV file")
        raise APIError(422, f"{where}: {kind}; {expected}")
    try:
        info = sf.info(io.BytesIO(raw))
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError... on garbage
        raise APIError(422, f"{where}: not a readable WAV file ({type(e).__name__}: {str(e)[:120]}); "
                            f"{expected}") from None
    if info.format not in ("WAV", "WAVEX") or info.subtype not in FORMATS:
        raise APIError(422, f"{where}: a WAV file of {info.subtype_info} samples; {expected}")
    if info.samplerate != sample_rate:
        raise APIError(422, f"{where}: sample rate {info.samplerate} Hz; the model's codec expects {sample_rate} Hz "
                            f"(resample it first)")
    if info.channels != 1:
        raise APIError(422, f"{where}: {info.channels} channels; expected mono (1 channel)")
    return info


def decode_wavs(audios: list[str], sample_rate: int, max_seconds: float, name: str = "context") -> list[np.ndarray]:
    """Base64 WAV files of ``max_seconds`` in all -> float32 samples ``(T,)`` each, checked in the module's
    three steps (no file is decoded before every header has passed); a 422 ``APIError`` that says what is
    wrong otherwise. ``name``: the request's field, for the messages (``context[1].audio``)."""
    check_sizes(audios, max_seconds, sample_rate)
    raws, seconds = [], 0.0
    for i, b64 in enumerate(audios):
        try:
            raws.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError) as e:
            raise APIError(422, f"{name}[{i}].audio: not valid base64 ({e}); expected base64 of a WAV file") from None
        seconds += check_header(raws[-1], sample_rate, f"{name}[{i}].audio").frames / sample_rate
        if seconds > max_seconds:
            raise APIError(422, f"{name} audio lasts more than {max_seconds:g} s in all ({seconds:.1f} s up to "
                                f"{name}[{i}]); this server takes at most that (send fewer or shorter turns)")
    out = []
    for i, raw in enumerate(raws):
        audio = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)[0][:, 0]
        if not np.isfinite(audio).all():
            raise APIError(422, f"{name}[{i}].audio: contains NaN or infinite samples; expected finite samples "
                                f"in [-1, 1]")
        out.append(audio)
    return out
