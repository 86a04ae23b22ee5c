"""Audio in and out: loading, saving, resampling, loudness and mel spectrograms.

Conventions used across csm_lib: audio is a float32 tensor in [-1, 1], mono, shape ``(T,)``
for one clip or ``(B, T)`` for a batch, and its sample rate travels with it as an ``int``.
Files are read and written with ``soundfile`` (torchaudio 2.11 delegates file I/O to
torchcodec, which we do not need); resampling and mel features use ``torchaudio``.

Chapter 01 (``notebooks/01_data.ipynb``) introduces it; every chapter that hears or measures audio uses it.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

SAMPLE_RATE = 16_000  # the corpus rate: flite's 16 kHz voices and the judges' native rate


def load(path: str | Path, sr: int | None = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
    """Read a sound file as mono float32 ``(T,)``; resample to ``sr`` unless ``sr`` is None.

    Returns ``(audio, sample_rate)``. Multi-channel files are averaged to mono.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no audio file at {path}")
    data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    audio = torch.from_numpy(data.mean(axis=1))
    if sr is not None and sr != file_sr:
        return resample(audio, file_sr, sr), sr
    return audio, file_sr


def duration(path: str | Path) -> float:
    """A sound file's length in seconds, from its header (the audio is not read)."""
    return float(sf.info(str(path)).duration)


def wav_bytes(audio: torch.Tensor | np.ndarray, sr: int) -> bytes:
    """Mono float audio ``(T,)`` -> the bytes of a 16-bit PCM WAV file (for players and HTTP bodies)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def save(path: str | Path, audio: torch.Tensor | np.ndarray, sr: int) -> Path:
    """Write mono audio ``(T,)`` as 16-bit PCM WAV, atomically (temp file, then rename)."""
    path = Path(path)
    x = torch.as_tensor(audio, dtype=torch.float32).detach().cpu()
    if x.dim() != 1:
        raise ValueError(f"save() expects mono audio of shape (T,), got {tuple(x.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".wav.tmp")
    os.close(fd)
    try:
        sf.write(tmp, x.clamp(-1, 1).numpy(), sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited (sinc) resampling of ``(..., T)`` audio from ``orig_sr`` to ``new_sr``."""
    if orig_sr == new_sr:
        return audio
    return AF.resample(audio, orig_sr, new_sr)


def rms_db(audio: torch.Tensor) -> float:
    """Root-mean-square level of ``(T,)`` audio in dB relative to full scale (dBFS)."""
    rms = audio.float().pow(2).mean().sqrt().clamp_min(1e-9)
    return float(20 * torch.log10(rms))


def normalize_loudness(audio: torch.Tensor, target_db: float = -23.0, peak: float = 0.99) -> torch.Tensor:
    """Scale ``(T,)`` audio so its RMS level is ``target_db`` dBFS, never letting a peak pass ``peak``.

    RMS loudness is a simple stand-in for LUFS: for single-speaker speech of similar
    bandwidth, as here, the two differ by a near-constant offset.
    """
    gain = 10 ** ((target_db - rms_db(audio)) / 20)
    max_abs = float(audio.abs().max()) if audio.numel() else 0.0
    if max_abs * gain > peak:
        gain = peak / max(max_abs, 1e-9)
    return audio * gain


def mel_spectrogram(
    audio: torch.Tensor,
    sr: int = SAMPLE_RATE,
    n_mels: int = 80,
    hop_ms: float = 10.0,
    win_ms: float = 25.0,
) -> torch.Tensor:
    """Log-mel spectrogram: ``(..., T)`` audio -> ``(..., n_mels, frames)`` in natural-log units.

    A hop of 10 ms gives 100 frames per second; the window is ``win_ms`` long.
    """
    hop = int(sr * hop_ms / 1000)
    win = int(sr * win_ms / 1000)
    n_fft = 1 << (win - 1).bit_length()  # next power of two >= window
    mel = AT.MelSpectrogram(
        sample_rate=sr, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=n_mels,
        f_min=0.0, f_max=sr / 2, power=2.0, center=True,
    )
    return torch.log(mel(audio.float()) + 1e-5)


@functools.cache
def _mel_pinv(n_fft: int, n_mels: int, sr: int) -> torch.Tensor:
    """Pseudo-inverse of the mel filterbank: ``(n_fft // 2 + 1, n_mels)``, least-squares undoing of it."""
    fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr)  # (n_freq, n_mels)
    return torch.linalg.pinv(fb.t())


def mel_to_audio(log_mel: torch.Tensor, sr: int = SAMPLE_RATE, hop_ms: float = 10.0, win_ms: float = 25.0,
                 n_iter: int = 32) -> torch.Tensor:
    """Invert :func:`mel_spectrogram`: ``(n_mels, frames)`` log-mel -> ``(T,)`` audio by Griffin-Lim.

    The mel filterbank is undone by least squares (non-negative), then Griffin-Lim guesses the
    phase that the magnitude spectrogram dropped (``n_iter`` iterations). Good enough to hear
    what a mel representation keeps; a neural decoder does much better.
    """
    hop = int(sr * hop_ms / 1000)
    win = int(sr * win_ms / 1000)
    n_fft = 1 << (win - 1).bit_length()
    power_mel = (log_mel.float().exp() - 1e-5).clamp_min(0)
    spec = (_mel_pinv(n_fft, log_mel.shape[-2], sr) @ power_mel).clamp_min(0)  # (n_freq, frames)
    gl = AT.GriffinLim(n_fft=n_fft, win_length=win, hop_length=hop, power=2.0, n_iter=n_iter,
                       rand_init=False)
    return gl(spec)
