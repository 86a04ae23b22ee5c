"""The fast path: a trained CSM prepared to generate one frame at a time (chapter 08).

``CSM.generate_frame`` (model.py) is the readable definition of a generation step. At batch 1 on
a CPU it is slow for reasons that have little to do with arithmetic: a frame of the reference
model is ~18 MFLOP and ~35 MB of weights, but the plain path dispatches hundreds of small ops,
builds a causal mask per call, allocates the audio decoder's cache per frame, embeds every
column of a frame (the text column too) and normalises every position. ``FastCSM`` computes the
same function with the same weights and removes that overhead:

1. **fused projections**: q, k and v are one matmul with one ``((H + 2G) * Dh, D)`` weight; the
   MLP's gate and up another. Fewer, larger matmuls: fewer dispatches, one read of the input.
2. **caches that cost nothing per frame**: the backbone's KV cache is preallocated once for the
   whole prompt and reply and written in place; the audio decoder's K positions live only inside
   one frame, kept as tensors that grow by concatenation (``GrowingCache``), which the compiled
   frame fuses like any other arithmetic.
3. **no mask for one position**: a single new query may see every cached key, so decoding one
   position is SDPA without a mask (``attention="sdpa"``, the default: PyTorch's CPU flash
   kernel), or plain ``softmax(q K^T) V`` over the cache (``"math"``, the same numbers written
   out; slower in chapter 08's measurement). Prefills (several positions) use SDPA, causal.
4. **the decoder's input projection folded into a table**: ``projection(embed_audio(k, c))`` is
   precomputed for every codebook ``k`` and code ``c``, a ``(K * V, Dd)`` lookup.
5. **RoPE on q and k at once** (they sit side by side in the fused output) as
   ``x * cos + roll(x) * sin``, with the sign of ``rotate_half`` folded into the sine table.
6. **only what is used is computed**: the last position alone is normalised and projected to
   logits; an audio frame's embedding is the sum of its K codebook rows, no text column.

Everything runs under ``torch.inference_mode``. The weights are *copied* at construction:
a ``FastCSM`` is a snapshot, to rebuild after the model is trained further. Its ``nn.Linear``
modules are ordinary ones, so ``torch.ao.quantization.quantize_dynamic`` turns them into INT8.

Shapes: B batch, S positions, K codebooks, V codes per codebook, D backbone width, Dd decoder
width, H query heads, G key/value heads, Dh head width, L layers.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.backbone import Block, KVCache, Transformer, TransformerConfig
from csm_lib.model import CSM, sample_topk

ATTENTION = ("math", "sdpa")  # how one new position attends to the cache


def fused_linear(*linears: nn.Linear) -> nn.Linear:
    """One ``nn.Linear`` whose output is the outputs of ``linears`` side by side (a copy of their weights)."""
    weight = torch.cat([lin.weight.detach() for lin in linears])  # (sum of out, in)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight.clone(), requires_grad=False)
    return fused


def copied_linear(lin: nn.Linear) -> nn.Linear:
    return fused_linear(lin)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, S, heads, Dh) by its positions' angles ``cos``/``sin_signed`` (S, 1, Dh).

    ``rotate_half(x) * sin`` of backbone.py equals ``roll(x, Dh/2) * [-sin, sin]``: the roll swaps
    the halves and the signed table negates the first.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, attention: str) -> torch.Tensor:
    """Attention of new positions ``start..start+S-1`` to every position so far.

    ``q`` (B, S, H, Dh); ``keys``/``values`` (B, G, start + S, Dh) from the cache. Returns (B, S, H * Dh).
    """
    B, S, H, Dh = q.shape
    G = keys.shape[1]
    if S == 1 and attention == "math":  # one query: no mask; the H/G query heads of a group share its K/V
        qg = q.reshape(B, G, H // G, Dh)
        scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(1 / math.sqrt(Dh))  # (B, G, H/G, T)
        return torch.matmul(scores.softmax(-1), values).reshape(B, 1, H * Dh)
    qt = q.transpose(1, 2)  # (B, H, S, Dh)
    if S == 1:
        out = F.scaled_dot_product_attention(qt, keys, values, enable_gqa=True)
    elif start == 0:
        out = F.scaled_dot_product_attention(qt, keys, values, is_causal=True, enable_gqa=True)
    else:  # a prefill after cached positions: position start+i sees 0..start+i
        mask = torch.ones(S, start + S, dtype=torch.bool, device=q.device).tril(diagonal=start)
        out = F.scaled_dot_product_attention(qt, keys, values, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2).reshape(B, S, H * Dh)


class LayerCache:
    """The backbone's keys and values on the fast path: one preallocated (B, G, S_max, Dh) tensor per
    layer for each, written in place at the new positions (``store``).

    ``KVCache`` (backbone.py) keeps all layers in one (L, B, G, S_max, Dh) tensor. Compiled, a write
    into one layer of it is a write into a *view* of a graph input, and inductor rebuilt the whole
    layer to make it: a frame's time grew with the cache's *size* (measured: 3.0 ms per frame with
    200 positions allocated, 4.0-6.1 with 2,048, 50 used). One tensor per layer is a graph input
    of its own, which ``index_copy_`` writes in place, whatever its size.
    """

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.max_len = max_len
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.length = 0  # positions filled so far (all layers advance together)

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def reset(self) -> None:
        self.length = 0


class GrowingCache:
    """The audio decoder's keys and values within one frame: at most K positions, kept as tensors that
    grow by concatenation. Inside the compiled frame this is pure arithmetic, no write into a buffer:
    the decoder's 2 x 7 cache writes per frame, each a call out of the compiled code when the decoder
    had a preallocated cache (~70 us each, measured: ~1 ms of a ~9 ms frame), become part of the fused graph.
    """

    def __init__(self, cfg: TransformerConfig):
        self.max_len = cfg.max_seq_len
        self.k: list[torch.Tensor | None] = [None] * cfg.n_layers  # each (B, G, length, Dh)
        self.v: list[torch.Tensor | None] = [None] * cfg.n_layers
        self.length = 0


AnyCache = LayerCache | KVCache | GrowingCache


def store(cache: AnyCache, layer: int, k: torch.Tensor,
          v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``k``/``v`` (B, G, S, Dh) after the cached positions of ``layer`` -> all its keys/values so far,
    each (B, G, length + S, Dh). The caller advances ``cache.length`` once every layer has stored."""
    if isinstance(cache, GrowingCache):
        if cache.k[layer] is not None:
            k, v = torch.cat([cache.k[layer], k], dim=2), torch.cat([cache.v[layer], v], dim=2)
        cache.k[layer], cache.v[layer] = k, v
        return k, v
    start, end = cache.length, cache.length + k.shape[2]
    positions = torch.arange(start, end, device=k.device)
    cache.k[layer].index_copy_(2, positions, k)  # in place, also when compiled (LayerCache)
    cache.v[layer].index_copy_(2, positions, v)
    return cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]


class FusedBlock(nn.Module):
    """A ``backbone.Block`` with fused q/k/v and gate/up projections, for inference."""

    def __init__(self, block: Block):
        super().__init__()
        a, m = block.self_attn, block.mlp
        cfg: TransformerConfig = a.cfg
        self.layer, self.eps = a.layer, cfg.norm_eps
        self.H, self.G, self.Dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.register_buffer("attn_norm", block.input_layernorm.weight.detach().clone())
        self.register_buffer("mlp_norm", block.post_attention_layernorm.weight.detach().clone())
        self.qkv = fused_linear(a.q_proj, a.k_proj, a.v_proj)  # D -> (H + 2G) * Dh
        self.o_proj = copied_linear(a.o_proj)
        self.gate_up = fused_linear(m.gate_proj, m.up_proj)  # D -> 2 * hidden
        self.down_proj = copied_linear(m.down_proj)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: AnyCache,
                attention: str) -> torch.Tensor:
        """``x`` (B, S, D): the positions after ``cache.length`` -> (B, S, D); their K/V go into ``cache``."""
        B, S, D = x.shape
        H, G = self.H, self.G
        qkv = self.qkv(F.rms_norm(x, (D,), self.attn_norm, self.eps)).view(B, S, H + 2 * G, self.Dh)
        qk = rope(qkv[:, :, : H + G], cos, sin)  # q and k rotated together
        start = cache.length
        keys, values = store(cache, self.layer, qk[:, :, H:].transpose(1, 2), qkv[:, :, H + G:].transpose(1, 2))
        x = x + self.o_proj(attend(qk[:, :, :H], keys, values, start, attention))
        gate, up = self.gate_up(F.rms_norm(x, (D,), self.mlp_norm, self.eps)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


class FastTransformer(nn.Module):
    """A ``backbone.Transformer`` for inference: returns only the last position's normalised state."""

    def __init__(self, t: Transformer):
        super().__init__()
        self.cfg = t.cfg
        self.blocks = nn.ModuleList(FusedBlock(b) for b in t.layers)
        self.register_buffer("norm", t.norm.weight.detach().clone())
        half = t.cfg.head_dim // 2
        sin = t.rope_sin.clone()
        sin[:, :half] *= -1  # the sign of rotate_half
        self.register_buffer("cos", t.rope_cos.clone()[:, None])  # (S_max, 1, Dh)
        self.register_buffer("sin", sin[:, None])

    def forward(self, x: torch.Tensor, cache: AnyCache, attention: str = "sdpa",
                last_only: bool = True) -> torch.Tensor:
        """``x`` (B, S, D), the positions after those in ``cache`` -> the last one's state (B, D)
        (every position's, (B, S, D), with ``last_only=False``)."""
        start, S = cache.length, x.shape[1]
        if start + S > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + S} positions is longer than max_seq_len={self.cfg.max_seq_len}")
        if start + S > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {start + S} were asked for")
        cos, sin = self.cos[start:start + S], self.sin[start:start + S]
        for block in self.blocks:
            x = block(x, cos, sin, cache, attention)
        cache.length = start + S
        return F.rms_norm(x[:, -1] if last_only else x, (x.shape[-1],), self.norm, self.cfg.norm_eps)


class FastCSM(nn.Module):
    """A trained ``CSM`` prepared for generation: ``prefill`` a prompt, then ``frame`` / ``feed`` per frame.

    >>> fast = FastCSM(model)
    >>> cache = fast.new_cache(batch_size=1, max_len=S + 100)
    >>> h = fast.prefill(frames, mask, cache)          # (B, D): the state after the prompt
    >>> codes = fast.frame(h, temperature, topk, g)    # (B, K): the next frame
    >>> h = fast.feed(codes, cache)                    # the state after it

    Same codes as ``CSM.generate_frame`` for the same seed (``tests/test_inference.py``).
    """

    def __init__(self, model: CSM, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        cfg = self.cfg = model.cfg
        self.attention = attention
        self.backbone = FastTransformer(model.backbone)
        self.decoder = FastTransformer(model.decoder)
        with torch.no_grad():
            w = model.audio_embeddings.weight.detach()
            self.register_buffer("audio_table", w.clone())  # (K * V, D)
            self.register_buffer("text_table", model.text_embeddings.weight.detach().clone())  # (V_text, D)
            self.register_buffer("decoder_table", model.projection(w).clone())  # (K * V, Dd): projection folded in
        self.projection = copied_linear(model.projection)  # D -> Dd, for the backbone state
        self.codebook0_head = copied_linear(model.codebook0_head)
        self.register_buffer("audio_head", model.audio_head.detach().clone())  # (K-1, Dd, V)
        self.register_buffer("offsets", torch.arange(cfg.n_codebooks) * cfg.audio_vocab_size)  # (K,)
        self.compiled_frame = self.compiled_backbone = None  # set by compile()

    def new_cache(self, batch_size: int, max_len: int) -> LayerCache:
        """A backbone KV cache for ``max_len`` positions (at most the backbone's window)."""
        p = self.audio_table
        return LayerCache(self.cfg.backbone, batch_size, min(max_len, self.cfg.backbone.max_seq_len),
                          dtype=p.dtype, device=p.device)

    def embed(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frames and mask (B, S, K+1) -> summed embeddings of the present columns (B, S, D)."""
        K = self.cfg.n_codebooks
        audio = self.audio_table[frames[..., :K] + self.offsets]  # (B, S, K, D)
        text = self.text_table[frames[..., K]]  # (B, S, D)
        return (audio * mask[..., :K, None]).sum(2) + text * mask[..., K, None]

    @torch.inference_mode()
    def prefill(self, frames: torch.Tensor, mask: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run the positions ``frames``/``mask`` (B, S, K+1) after those in ``cache`` -> the last state (B, D)."""
        return (self.compiled_backbone or self.backbone)(self.embed(frames, mask), cache, self.attention)

    @torch.inference_mode()
    def feed(self, codes: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Append one audio frame ``codes`` (B, K) to ``cache`` -> the state after it (B, D)."""
        x = self.audio_table[codes + self.offsets].sum(1, keepdim=True)  # (B, 1, D)
        return (self.compiled_backbone or self.backbone)(x, cache, self.attention)

    def compile(self) -> FastCSM:
        """``torch.compile`` the work of each frame: its decoding (codebook 0 and the K - 1
        audio-decoder steps) and its feeding back through the backbone (one position); and prefills.

        Inductor traces each into one graph (the decoding's whole loop, sampled too: its draws are
        made before it, ``draws``) and writes C++ that fuses the small ops between the matmuls: at batch 1 a frame
        is hundreds of tiny ops, and their dispatch, not the arithmetic, is most of its time. The
        backbone is compiled with ``dynamic=True``: the number of cached positions and of new ones are
        symbols, so three graphs serve every prompt and cache size: one new position (a frame fed
        back), a prefill into an empty cache (causal attention), and a prefill after cached positions
        (a new turn's text in a kept conversation: attention with a mask). A prefill of 75 positions
        after 150 cached took ~20 ms eager, ~12 compiled: at a few dozen rows the matmuls are small,
        and the tuned ones fuse their neighbours.
        Two options (chapter 08 measures them; frame + feed on 2 threads went from ~9 ms to ~5 ms):
        ``cpp_wrapper``: the code that calls those kernels is C++ too (by default it is Python), so a
        frame is one call into C++, not ~100 Python-launched kernels; ``max_autotune``: each matmul
        is timed as MKL's and as inductor's own C++ GEMM template, and the faster kept (at batch 1
        the template, with the matmul's neighbours fused into it, wins). The first call of each
        setting compiles and tunes (~1-2 min on two CPU cores).
        """
        options = {"cpp_wrapper": True, "max_autotune": True}
        self.compiled_frame = torch.compile(self.decode_frame, dynamic=False, options=options)
        self.compiled_backbone = torch.compile(self.backbone.forward, dynamic=True, options=options)
        return self

    @torch.inference_mode()
    def frame(self, h: torch.Tensor, temperature: float = 0.9, topk: int = 50,
              generator: torch.Generator | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The frame after backbone state ``h`` (B, D): codebook 0 from the head, 1..K-1 from the decoder -> (B, K).

        ``prefix`` (B, j): codes imposed on the first j codebooks (speculative decoding's corrections).
        """
        decode = self.compiled_frame or self.decode_frame
        noise = self.draws(h.shape[0], temperature, topk, generator, prefix)
        return decode(h, temperature, topk, generator, prefix, noise)

    def draws(self, B: int, temperature: float, topk: int, generator: torch.Generator | None,
              prefix: torch.Tensor | None) -> list[torch.Tensor | None] | None:
        """The Exp(1) noise each sampled codebook of a frame draws (``model.sample_topk``), drawn now, in
        codebook order: the frame's decoding then has no draw inside (one compiled graph, not one per
        codebook), and the generator advances as ``torch.multinomial`` would advance it."""
        if temperature == 0:
            return None
        K, n = self.cfg.n_codebooks, min(topk, self.cfg.audio_vocab_size)
        imposed = 0 if prefix is None else prefix.shape[1]
        device = self.audio_table.device
        return [None] * imposed + [torch.empty(B, n, device=device).exponential_(1, generator=generator)
                                   for _ in range(imposed, K)]

    @torch.inference_mode()
    def frame_each(self, h: torch.Tensor, settings: list[tuple[float, int, torch.Generator | None]]) -> torch.Tensor:
        """``frame`` for B independent streams at once: row i of ``h`` (B, D) is sampled with its own
        ``settings[i]`` = (temperature, topk, generator) -> (B, K).

        The audio decoder runs once for the B rows (continuous batching in ``serve/workers.py``); only the
        draws are per row. A row's codes equal ``frame`` on that row alone with the same generator
        whenever the batched matmuls round as the single-row ones (``tests/test_serve.py`` checks it here).
        """
        B = h.shape[0]
        if len(settings) != B:
            raise ValueError(f"{B} rows of h but {len(settings)} settings")
        temperatures, topks, generators = (list(x) for x in zip(*settings, strict=True))
        return self.decode_frame(h, temperatures, topks, generators, None)

    def decode_frame(self, h: torch.Tensor, temperature: float, topk: int, generator: torch.Generator | None,
                     prefix: torch.Tensor | None, noise: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``frame``'s work, with the draws (``draws``) given: what ``compile`` compiles."""
        K, V = self.cfg.n_codebooks, self.cfg.audio_vocab_size
        cache = GrowingCache(self.cfg.decoder)  # the decoder's K positions, this frame only

        def pick(k: int, logits: torch.Tensor) -> torch.Tensor:
            if prefix is not None and k < prefix.shape[1]:
                return prefix[:, k]
            if isinstance(generator, list):  # one stream per row, each with its own settings (frame_each)
                return torch.cat([sample_topk(logits[i:i + 1], t, n, g)
                                  for i, (t, n, g) in enumerate(zip(temperature, topk, generator, strict=True))])
            return sample_topk(logits, temperature, topk, generator, None if noise is None else noise[k])

        codes = [pick(0, self.codebook0_head(h))]
        x = torch.stack([self.projection(h), self.decoder_table[codes[0]]], dim=1)  # (B, 2, Dd)
        for k in range(1, K):
            out = self.decoder(x, cache, self.attention)  # (B, Dd)
            codes.append(pick(k, out @ self.audio_head[k - 1]))
            x = self.decoder_table[codes[-1] + k * V][:, None]  # (B, 1, Dd)
        return torch.stack(codes, dim=1)


def int8(fast: FastCSM) -> FastCSM:
    """A copy of ``fast`` whose ``nn.Linear`` layers are PyTorch's dynamic INT8 ones.

    Weights are stored as int8 with one scale per output row; each call quantises its input on
    the fly, multiplies in int8 and rescales to fp32. The embedding tables and the audio heads
    (plain tensors, not ``nn.Linear``) stay fp32.
    """
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still works in 2.11
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(copy.deepcopy(fast), {nn.Linear: per_channel_dynamic_qconfig}, inplace=False)


@torch.no_grad()
def plain_frames(model: CSM, frames: torch.Tensor, mask: torch.Tensor, max_frames: int, temperature: float = 0.9,
                 topk: int = 50, seed: int | None = None, stop: bool = True) -> list[torch.Tensor]:
    """The plain path, for comparison: ``CSM.generate_frame`` in a loop after the prompt ``frames``/``mask``
    (1, S, K+1), until end of speech (not yielded; with ``stop=False`` it goes on) or ``max_frames``
    -> the frames' codes, each (1, K)."""
    K = model.cfg.n_codebooks
    cache = KVCache(model.cfg.backbone, 1, max_len=frames.shape[1] + max_frames)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = []
    for _ in range(max_frames):
        codes = model.generate_frame(frames, mask, cache, temperature, topk, generator)  # (1, K)
        if stop and (codes == 0).all():
            break
        out.append(codes)
        frames = torch.zeros(1, 1, K + 1, dtype=torch.long)
        frames[0, 0, :K] = codes[0]
        mask = torch.zeros_like(frames, dtype=torch.bool)
        mask[0, 0, :K] = True
    return out
