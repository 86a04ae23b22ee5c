"""The Llama-style transformer that CSM uses twice: as the backbone and as the audio decoder.

A stack of pre-norm blocks, each ``x + attention(norm(x))`` then ``x + mlp(norm(x))``, with

* **RMSNorm** — scale by the root mean square, no mean subtraction, no bias;
* **rotary position embeddings (RoPE)** — queries and keys are rotated by an angle proportional
  to their position, so their dot product depends only on the *distance* between positions;
* **grouped-query attention (GQA)** — fewer key/value heads than query heads (each K/V head is
  shared by ``n_heads // n_kv_heads`` query heads), which shrinks the KV cache;
* **a KV cache** — during generation each new position attends to the keys and values of all
  earlier positions, stored instead of recomputed;
* **SwiGLU MLP** — ``w2(silu(w1 x) * w3 x)``.

This module takes *embeddings* in and gives hidden states out: what the positions are (text
tokens, audio frames) is decided by ``model.py``. RoPE uses the half-split ("rotate_half")
layout of Hugging Face's Llama, so weights convert to and from transformers without permutation.

Shapes: B batch, S positions, D model width, H query heads, G key/value heads, Dh head width.

Explained in chapter 04 (``notebooks/04_backbone.ipynb``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class TransformerConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    hidden_dim: int = 768  # SwiGLU inner width
    max_seq_len: int = 2048
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5
    # Llama-3 frequency scaling, (factor, low_freq_factor, high_freq_factor, original_max_len);
    # csm-1b uses (32, 1, 4, 8192) in both transformers. None: plain RoPE.
    rope_scaling: tuple[float, float, float, int] | None = None

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def llama3_scale(inv_freq: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                 original_max_len: int) -> torch.Tensor:
    """Llama-3's RoPE scaling: slow frequencies (wavelength > original_max_len / low_freq_factor)
    are divided by ``factor``, fast ones (wavelength < original_max_len / high_freq_factor) kept,
    and those in between interpolated smoothly."""
    wavelen = 2 * torch.pi / inv_freq
    smooth = ((original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def rope_frequencies(head_dim: int, theta: float,
                     scaling: tuple[float, float, float, int] | None = None) -> torch.Tensor:
    """Rotation frequency of each dimension pair, ``(head_dim/2,)`` radians per position (float64).

    Pair i (dimensions i and i + head_dim/2, half-split layout) turns at ``theta ** (-2i / head_dim)``,
    rescaled by ``llama3_scale`` if ``scaling`` is given.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return inv_freq if scaling is None else llama3_scale(inv_freq, *scaling)


def rope_tables(head_dim: int, max_len: int, theta: float,
                scaling: tuple[float, float, float, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles: two ``(max_len, head_dim)`` tables."""
    inv_freq = rope_frequencies(head_dim, theta, scaling)  # (Dh/2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (max_len, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, Dh)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, heads, S, Dh) by the angles ``cos``/``sin`` (B or 1, S, Dh) of its positions."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half
    return x * cos[:, None] + rotated * sin[:, None]


class KVCache:
    """Keys and values of every layer for positions ``0 .. length-1``, preallocated to ``max_len``."""

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.max_len = max_len or cfg.max_seq_len
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, G, S_max, Dh)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled so far (all layers advance together)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, G, S_new, Dh) after the cached positions; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0


class Attention(nn.Module):
    """Multi-head self-attention with grouped K/V heads, RoPE and an optional KV cache."""

    def __init__(self, cfg: TransformerConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        """``x`` (B, S, D) -> (B, S, D). ``mask`` (B or 1, 1, S, S_total) is True where attention is allowed."""
        B, S, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(B, S, self.cfg.n_heads, hd).transpose(1, 2)  # (B, H, S, Dh)
        k = self.k_proj(x).view(B, S, self.cfg.n_kv_heads, hd).transpose(1, 2)  # (B, G, S, Dh)
        v = self.v_proj(x).view(B, S, self.cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, G, S_total, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, S, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: TransformerConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Embeddings (B, S, D) in, normalised hidden states (B, S, D) out. Causal; optional KV cache."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # recompute each block's activations in the backward pass instead of storing them
        self.gradient_checkpointing = False

    def forward(self, h: torch.Tensor, cache: KVCache | None = None,
                padding_mask: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
        """Run the stack on ``h`` (B, S, D), the positions after those already in ``cache``.

        ``padding_mask`` (B, S_total) is False at padded positions, which no position attends to.
        ``causal=False`` lets every position see every other one (a non-autoregressive model).
        """
        B, S, _ = h.shape
        start = cache.length if cache is not None else 0
        end = start + S
        if end > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {end} positions is longer than max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[None, start:end], self.rope_sin[None, start:end]  # (1, S, Dh)
        # position start+i may attend to positions 0..start+i
        mask = torch.ones(S, end, dtype=torch.bool, device=h.device)
        if causal:
            mask = mask.tril(diagonal=start)
        mask = mask[None, None]
        if padding_mask is not None:
            # a padded position still sees itself, so its (ignored) output is finite, not NaN
            itself = torch.ones(S, end, dtype=torch.bool, device=h.device).tril(start) & \
                ~torch.ones(S, end, dtype=torch.bool, device=h.device).tril(start - 1)
            mask = (mask & padding_mask[:, None, None, :end]) | itself[None, None]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                h = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, cache)
        if cache is not None:
            cache.length = end
        return self.norm(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
