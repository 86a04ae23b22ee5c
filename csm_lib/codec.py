"""A small causal neural audio codec with a split RVQ bottleneck (a CPU-sized Mimi).

    audio (B, T) 16 kHz
      -> log-mel frames (B, n_mels, T/hop)          100 Hz, causal framing
      -> encoder: causal ConvNeXt blocks, stride-s downsampling, more blocks
      -> latent (B, F, D) at frame_rate Hz          12.5 Hz by default, like Mimi
      -> SplitRVQ: codebook 0 semantic + K-1 acoustic  -> codes (B, K, F)
      -> decoder: blocks, stride-s upsampling, blocks at 100 Hz
      -> per 10 ms frame a complex spectrum (magnitude, phase) -> inverse FFT -> overlap-add

Why frames and not samples. Mimi and SEANet convolve the waveform itself, which costs
thousands of multiply-adds per *sample*; on two CPU cores that is too slow to reach the
"50x faster than real time" we want. Like Vocos, we let the network work at 100 frames per
second and leave the last step, from spectrum to waveform, to an inverse FFT: the same
information, a fraction of the compute. Every convolution is causal (it sees only the past),
so the decoder can run frame by frame with carried state (:class:`StreamingDecoder`) and give
exactly what offline decoding gives.

Input level matters: the codec is trained on corpus audio normalised to -23 dBFS
(``audio.normalize_loudness``). Normalise other audio the same way before encoding: a clip
8 dB louder reconstructs measurably worse (log-mel distance 1.0 instead of 0.64).

Shapes: B batch, T samples, M mel frames (100 Hz), F codec frames, K codebooks, D latent width.

Explained in chapter 03 (``notebooks/03_codec.ipynb``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
import torchaudio.transforms as AT

from csm_lib.quantize import SplitRVQ
from csm_lib.semantic import PHONES


@dataclass
class CodecConfig:
    sample_rate: int = 16_000
    hop: int = 160  # samples per analysis/synthesis frame: 10 ms
    n_fft: int = 640  # synthesis window: 40 ms, four frames overlap
    n_mels: int = 80
    frame_rate: float = 12.5  # codec frames per second (Mimi: 12.5)
    dim: int = 256  # convolution width
    latent_dim: int = 128  # width of the quantized latent
    hi_blocks: int = 4  # ConvNeXt blocks at 100 Hz, in the encoder and again in the decoder
    lo_blocks: int = 2  # blocks at the codec frame rate, each side
    kernel: int = 7  # depthwise kernel of the ConvNeXt blocks
    n_q: int = 8  # codebooks: 1 semantic + n_q - 1 acoustic
    n_semantic: int = 1
    codebook_size: int = 1024
    quantizer_dropout: float = 0.5

    @property
    def stride(self) -> int:
        """Analysis frames per codec frame."""
        s = self.sample_rate / self.hop / self.frame_rate
        if abs(s - round(s)) > 1e-9 or s < 1:
            raise ValueError(f"frame_rate {self.frame_rate} Hz must divide {self.sample_rate / self.hop} Hz")
        return round(s)

    @property
    def samples_per_frame(self) -> int:
        return self.hop * self.stride

    @property
    def kbps(self) -> float:
        return self.bitrate(self.n_q)

    def bitrate(self, n_q: int) -> float:
        """Kilobits per second carried by the first ``n_q`` codebooks."""
        return self.frame_rate * n_q * math.log2(self.codebook_size) / 1000


PRESETS = {
    "tiny": CodecConfig(dim=64, latent_dim=32, hi_blocks=1, lo_blocks=1, n_q=4, codebook_size=64),
    "reference": CodecConfig(),
    "reference_25hz": CodecConfig(frame_rate=25.0),
    "reference_50hz": CodecConfig(frame_rate=50.0),
}


# ----------------------------------------------------------------------------- building blocks

class CausalConv1d(nn.Conv1d):
    """A Conv1d that sees only the past: left-padded by ``(kernel - 1) * dilation`` frames.

    In streaming mode (``self.streaming = True``) the padding is replaced by the last input
    frames of the previous call, kept in ``self.state``, so feeding a sequence in pieces gives
    the same output as feeding it whole.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streaming = False
        self.state: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, L) -> (B, C_out, L)
        ctx = (self.kernel_size[0] - 1) * self.dilation[0]
        if not self.streaming:
            return super().forward(F.pad(x, (ctx, 0)))
        past = self.state if self.state is not None else x.new_zeros(x.shape[0], x.shape[1], ctx)
        x = torch.cat([past, x], dim=-1)
        self.state = x[..., x.shape[-1] - ctx:] if ctx else x[..., :0]
        if self.groups == self.in_channels == self.out_channels and self.stride[0] == 1:
            return self.depthwise(x)
        return super().forward(x)

    def depthwise(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, ctx + L) -> (B, C, L)
        """This depthwise convolution as ``kernel`` shifted products: the same sums as ``conv1d``, in
        another order, as elementwise ops that ``torch.compile`` fuses into one loop. Streaming feeds
        a few frames at a time, where the library's depthwise kernel costs ~0.2 ms a call (chapter 08)."""
        d, (k,) = self.dilation[0], self.kernel_size
        L = x.shape[-1] - (k - 1) * d
        w = self.weight[:, 0]  # (C, k)
        y = sum(w[:, j, None] * x[..., j * d: j * d + L] for j in range(k))
        return y if self.bias is None else y + self.bias[:, None]


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv -> LayerNorm -> pointwise MLP (x3) -> scaled residual."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.pw2 = nn.Linear(dim, 3 * dim), nn.Linear(3 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, L) -> (B, D, L)
        h = self.dwconv(x).transpose(1, 2)  # (B, L, D)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class MelFrontend(nn.Module):
    """Causal log-mel analysis: ``(B, T) -> (B, n_mels, T // hop)``.

    Frame m covers samples ``[(m + 1) * hop - n_fft, (m + 1) * hop)``: it ends where its
    10 ms slot ends, so it never looks ahead.
    """

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.pad = cfg.n_fft - cfg.hop
        self.mel = AT.MelSpectrogram(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop,
                                     n_mels=cfg.n_mels, center=False, power=1.0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        mel = self.mel(F.pad(audio, (self.pad, 0)))
        return (mel.clamp_min(1e-5).log() + 5.0) / 5.0  # roughly zero-centred, unit scale


class ISTFTHead(nn.Module):
    """Per-frame complex spectrum -> waveform by inverse FFT and overlap-add.

    ``(B, D, M) -> (B, M * hop)``. Frame m is windowed and added onto samples
    ``[(m + 1) * hop - n_fft, (m + 1) * hop)``, mirroring :class:`MelFrontend`. A sample is
    complete once the ``n_fft / hop`` frames covering it are in, so a streaming decoder emits
    audio ``n_fft - hop`` samples (30 ms) behind the last frame and carries the partial tail.
    """

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.hop
        self.proj = nn.Linear(cfg.dim, 2 * (cfg.n_fft // 2 + 1))
        window = torch.hann_window(cfg.n_fft)
        self.register_buffer("window", window, persistent=False)
        # sum of the shifted windows: constant (n_fft / hop / 2 for a Hann window)
        self.ola_gain = float(window.sum() / cfg.hop)

    def frames(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, D, M) -> (B, M, n_fft)`` windowed time-domain frames."""
        log_mag, phase = self.proj(h.transpose(1, 2)).chunk(2, dim=-1)
        mag = log_mag.clamp(max=6.0).exp()
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        return torch.fft.irfft(spec, n=self.n_fft) * self.window / self.ola_gain

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, M, n_fft) -> (B, (M - 1) * hop + n_fft)``, starting at sample ``hop - n_fft``."""
        B, M, N = frames.shape
        return F.fold(frames.transpose(1, 2), output_size=(1, (M - 1) * self.hop + N),
                      kernel_size=(1, N), stride=(1, self.hop)).reshape(B, -1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.overlap_add(self.frames(h))
        return y[:, self.n_fft - self.hop: self.n_fft - self.hop + h.shape[-1] * self.hop]


# ----------------------------------------------------------------------------- the codec

@dataclass
class CodecOutput:
    audio: torch.Tensor  # (B, T) reconstruction
    codes: torch.Tensor  # (B, K_used, F)
    commit_loss: torch.Tensor  # scalar
    phone_logits: torch.Tensor  # (B, M, n_phones): the semantic read-out of codebook 0


class Codec(nn.Module):
    """Encoder -> split RVQ -> decoder. ``encode``/``decode`` for inference, ``forward`` to train."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        d, k, s = cfg.dim, cfg.kernel, cfg.stride
        self.frontend = MelFrontend(cfg)
        self.encoder = nn.Sequential(
            CausalConv1d(cfg.n_mels, d, k),
            *[ConvNeXtBlock(d, k) for _ in range(cfg.hi_blocks)],
            nn.Conv1d(d, d, kernel_size=s, stride=s),  # s frames -> 1: causal at the codec rate
            *[ConvNeXtBlock(d, k) for _ in range(cfg.lo_blocks)],
            nn.Conv1d(d, cfg.latent_dim, 1),
        )
        self.quantizer = SplitRVQ(cfg.latent_dim, cfg.n_q, cfg.codebook_size, cfg.n_semantic,
                                  dropout_p=cfg.quantizer_dropout)
        self.decoder = nn.Sequential(
            CausalConv1d(cfg.latent_dim, d, 3),
            *[ConvNeXtBlock(d, k) for _ in range(cfg.lo_blocks)],
            nn.ConvTranspose1d(d, d, kernel_size=s, stride=s),  # 1 -> s frames, no overlap
            *[ConvNeXtBlock(d, k) for _ in range(cfg.hi_blocks)],
        )
        self.out_norm = nn.LayerNorm(d)
        self.head = ISTFTHead(cfg)
        # semantic read-out: codebook 0's vector predicts the phone of each of its s frames
        self.phone_head = nn.Linear(cfg.latent_dim, s * len(PHONES))
        self.stream_features = None  # compiled _decoder_features for StreamingDecoder (compile_streaming)

    # --- shapes -----------------------------------------------------------------------------
    def _trim(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2:
            raise ValueError(f"codec expects audio of shape (B, T), got {tuple(audio.shape)}")
        spf = self.cfg.samples_per_frame
        n = audio.shape[-1] // spf * spf
        if n == 0:
            raise ValueError(f"audio shorter than one codec frame ({spf} samples at {self.cfg.sample_rate} Hz)")
        return audio[:, :n]

    def latent(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, F, latent_dim)``; T is cut to a whole number of codec frames."""
        return self.encoder(self.frontend(self._trim(audio))).transpose(1, 2)

    def _decoder_features(self, z: torch.Tensor) -> torch.Tensor:  # (B, F, D) -> (B, dim, F * stride)
        h = self.decoder(z.transpose(1, 2))
        return self.out_norm(h.transpose(1, 2)).transpose(1, 2)

    def _synthesize(self, z: torch.Tensor) -> torch.Tensor:  # (B, F, D) -> (B, F * spf)
        return self.head(self._decoder_features(z))

    def compile_streaming(self) -> Codec:
        """``torch.compile`` the decoder's features as ``StreamingDecoder`` runs them (its convolutions in
        streaming mode; any number of frames per push: ``dynamic=True``), with the options of
        ``FastCSM.compile``. Same audio within float rounding; the first pushes compile (~1 min)."""
        self.stream_features = torch.compile(self._decoder_features, dynamic=True,
                                             options={"cpp_wrapper": True, "max_autotune": True})
        return self

    # --- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, audio: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``(B, T)`` 16 kHz audio -> ``(B, n_q, F)`` long codes; codebook 0 is the semantic one."""
        return self.quantizer.encode(self.latent(audio), n_q).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, k, F)`` codes (any prefix k of the codebooks) -> ``(B, F * samples_per_frame)``."""
        if codes.dim() != 3:
            raise ValueError(f"decode expects codes of shape (B, K, F), got {tuple(codes.shape)}")
        return self._synthesize(self.quantizer.decode(codes.transpose(1, 2)))

    @torch.no_grad()
    def swap(self, codes_a: torch.Tensor, codes_b: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """A's first ``keep`` codebooks with B's others, over the frames both have:
        ``(B, K, F_a)``, ``(B, K, F_b)`` -> audio ``(B, min(F_a, F_b) * spf)`` (chapter 03's swap experiment)."""
        n = min(codes_a.shape[-1], codes_b.shape[-1])
        return self.decode(torch.cat([codes_a[:, :keep, :n], codes_b[:, keep:, :n]], dim=1))

    # --- training ---------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor, n_q: int | None = None) -> CodecOutput:
        z = self.latent(audio)
        q, semantic = self.quantizer(z, n_q)
        B, Fr, _ = semantic.shape
        phone_logits = self.phone_head(semantic).reshape(B, Fr * self.cfg.stride, len(PHONES))
        return CodecOutput(self._synthesize(q.quantized), q.codes.transpose(1, 2), q.commit_loss, phone_logits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class StreamingDecoder:
    """Decode codes frame by frame, carrying every convolution's past and the overlap-add tail.

    >>> dec = StreamingDecoder(codec, batch_size=1)
    >>> chunks = [dec.push(codes[:, :, f:f + 1]) for f in range(codes.shape[-1])] + [dec.flush()]
    >>> torch.cat(chunks, -1)  # equals codec.decode(codes)

    The first push returns ``n_fft - hop`` samples fewer than a frame's worth (the 30 ms the
    overlap-add still waits for); ``flush`` returns them at the end.

    Each decoder owns its convolutions' past (``self.states``, one per ``CausalConv1d`` of the
    codec's decoder): it lends them to the shared modules for the duration of a ``push`` and takes
    them back after, so several decoders on one codec (two conversations) never disturb each other.
    """

    def __init__(self, codec: Codec, batch_size: int = 1):
        self.codec = codec
        self.convs = [m for m in codec.decoder.modules() if isinstance(m, CausalConv1d)]
        self.states: list[torch.Tensor | None] = [None] * len(self.convs)  # (B, C_in, kernel - 1) each
        self.tail = torch.zeros(batch_size, codec.cfg.n_fft - codec.cfg.hop)
        self.started = False

    @contextmanager
    def _streaming(self):
        """The shared convolutions stream with this decoder's states, then give them back."""
        for m, state in zip(self.convs, self.states, strict=True):
            m.streaming, m.state = True, state
        try:
            yield
        finally:
            self.states = [m.state for m in self.convs]
            for m in self.convs:
                m.streaming, m.state = False, None

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, k, n)`` codes of the next n frames -> the audio they complete ``(B, n * spf)``."""
        c = self.codec
        with self._streaming():
            h = (c.stream_features or c._decoder_features)(c.quantizer.decode(codes.transpose(1, 2)))
        y = c.head.overlap_add(c.head.frames(h))  # starts n_fft - hop samples before the chunk
        keep = self.tail.shape[-1]
        y[:, :keep] += self.tail
        out, self.tail = y[:, : y.shape[-1] - keep], y[:, y.shape[-1] - keep:]
        if not self.started:  # the first n_fft - hop samples lie before time 0
            out, self.started = out[:, keep:], True
        return out

    def flush(self) -> torch.Tensor:
        """The last ``n_fft - hop`` samples, which no further frame will complete."""
        return self.tail


# ----------------------------------------------------------------------------- losses

class ReconstructionLoss(nn.Module):
    """Multi-resolution STFT loss: log-magnitude L1, spectral convergence and log-mel L1 per window size.

    Several window sizes force both fine time detail and fine frequency detail; comparing
    magnitudes at resolutions other than the synthesis one also keeps the predicted phases
    consistent from frame to frame. One STFT per resolution serves all three terms.
    """

    def __init__(self, sample_rate: int = 16_000, resolutions: tuple[int, ...] = (256, 512, 1024)):
        super().__init__()
        self.resolutions = resolutions
        for n in resolutions:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
            fb = AF.melscale_fbanks(n // 2 + 1, 0.0, sample_rate / 2, n // 8, sample_rate)  # (n_freq, n_mels)
            self.register_buffer(f"fb{n}", fb, persistent=False)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        mel, stft = y.new_zeros(()), y.new_zeros(())
        for n in self.resolutions:
            w, fb = getattr(self, f"win{n}"), getattr(self, f"fb{n}")
            S_hat = torch.stft(y_hat, n, n // 4, window=w, return_complex=True).abs()  # (B, n_freq, frames)
            S = torch.stft(y, n, n // 4, window=w, return_complex=True).abs()
            sc = torch.linalg.norm(S - S_hat) / torch.linalg.norm(S).clamp_min(1e-5)
            stft = stft + sc + F.l1_loss(S_hat.clamp_min(1e-5).log(), S.clamp_min(1e-5).log())
            M_hat, M = (fb.t() @ S_hat).clamp_min(1e-5).log(), (fb.t() @ S).clamp_min(1e-5).log()
            mel = mel + F.l1_loss(M_hat, M)
        n = len(self.resolutions)
        return {"mel": mel / n, "stft": stft / n}

