"""Audio in and out of the server (chapter 11): a context turn's base64 WAV decoded and checked, and the
reply as 16-bit PCM with a WAV header (streamed: an open-ended one).

A context WAV must be what the model hears: mono, at the codec's sample rate, finite samples; any
other file is answered 422 with what was wrong and what is expected.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import soundfile as sf

from csm_lib.audio import wav_bytes
from csm_lib.serve.schema import APIError


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples ``(T,)`` in [-1, 1] -> 16-bit little-endian PCM bytes (clipped)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, n_bytes: int | None = None) -> bytes:
    """A 44-byte WAV header for 16-bit mono PCM; ``n_bytes=None`` (a stream of unknown length) writes
    the largest sizes, as streaming WAV servers do."""
    data = 0xFFFFFFFF - 36 if n_bytes is None else n_bytes
    return (b"RIFF" + (36 + data).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + sample_rate.to_bytes(4, "little")
            + (sample_rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + data.to_bytes(4, "little"))


def encode_wav(audio: np.ndarray, sample_rate: int) -> str:
    """Float samples ``(T,)`` -> base64 of a 16-bit WAV file (for a request's ``context``)."""
    return base64.b64encode(wav_bytes(audio, sample_rate)).decode()


def decode_wav(b64: str, sample_rate: int, where: str) -> np.ndarray:
    """Base64 of a WAV file -> float32 samples ``(T,)``; a 422 ``APIError`` saying what is wrong otherwise."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(422, f"{where}: not valid base64 ({e}); expected base64 of a WAV file") from None
    try:
        audio, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError... on garbage
        raise APIError(422, f"{where}: not a readable WAV file ({type(e).__name__}: {str(e)[:120]}); "
                            f"expected a mono WAV at {sample_rate} Hz, base64-encoded") from None
    if sr != sample_rate:
        raise APIError(422, f"{where}: sample rate {sr} Hz; the model's codec expects {sample_rate} Hz "
                            f"(resample it first)")
    if audio.shape[1] != 1:
        raise APIError(422, f"{where}: {audio.shape[1]} channels; expected mono (1 channel)")
    audio = audio[:, 0]
    if not np.isfinite(audio).all():
        raise APIError(422, f"{where}: contains NaN or infinite samples; expected finite samples in [-1, 1]")
    return audio
