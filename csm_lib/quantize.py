"""Vector quantization: k-means, an EMA-trained codebook, residual VQ and Mimi's split RVQ.

A codec turns audio into a few *integers* per frame. The bottleneck that does it is a codebook
of C vectors: each latent vector ``x`` (dimension D) is replaced by its nearest codeword, and
only the codeword's index is kept. One codebook of C entries carries ``log2(C)`` bits per frame;
*residual* VQ stacks K codebooks, each quantizing what the previous ones missed, so the bits add
up while the search stays cheap (K searches over C, not one over C**K).

How the codebook learns (as in SoundStream, EnCodec and Mimi):

* **k-means initialisation** — the first batch seeds the codewords, so none start far from data.
* **EMA updates** — each codeword drifts to the running mean of the vectors assigned to it
  (online k-means) instead of being trained by gradient descent.
* **dead-code restart** — a codeword that (almost) nobody picks is moved onto a random vector
  of the current batch, so the codebook's capacity is not wasted.
* **straight-through gradients** — quantization has no gradient; the encoder receives the
  decoder's gradient as if ``quantized == x``, and a **commitment loss** ``|x - sg(q)|^2`` keeps
  the encoder's outputs close to the codewords it is given.
* **quantizer dropout** — training with a random number of codebooks makes every prefix of the
  stack a usable, coarser code (bitrate scalability).

Shapes: B batch, F frames, D latent dimension, K codebooks, C codebook size, N vectors.

Explained in chapter 02 (``notebooks/02_rvq.ipynb``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on ``x`` (N, D) with k-means++ seeding; returns centroids (k, D).

    k-means++ picks each new seed with probability proportional to its squared distance from
    the seeds so far, which avoids most bad local optima of a uniform random start. An empty
    cluster keeps its previous centroid.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects (N, D) vectors, got shape {tuple(x.shape)}")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)  # (N,) squared distance to the nearest seed
    for _ in range(1, k):
        weights = d2.cpu() if float(d2.sum()) > 0 else torch.ones(x.shape[0])
        i = int(torch.multinomial(weights, 1, generator=g))
        centroids.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    centroids = torch.stack(centroids)
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict:
    """How a codebook is used: fraction of entries ever chosen, and the perplexity of the choices.

    ``codes`` holds indices of one codebook, any shape. Perplexity is ``exp(entropy)``: the
    number of equally likely codes that would carry the same information (``C`` at best).
    """
    counts = torch.bincount(codes.reshape(-1).long().cpu(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"used": float((counts > 0).double().mean()), "perplexity": float(entropy.exp()),
            "bits": float(entropy / math.log(2))}


@dataclass
class VQOutput:
    quantized: torch.Tensor  # (..., D), straight-through: carries gradient to the input
    codes: torch.Tensor  # (...,) long
    commit_loss: torch.Tensor  # scalar


class VectorQuantizer(nn.Module):
    """One codebook of ``codebook_size`` vectors of size ``dim``, trained by EMA (not by gradients).

    ``forward(x)`` takes ``(..., D)`` and returns a :class:`VQOutput`. In training mode it also
    updates the codebook: k-means on the first batch, then an exponential moving average of the
    assigned vectors (``decay``), and dead-code restart for entries whose EMA count falls below
    ``dead_fraction`` of a fair share (batch vectors / codebook size).
    """

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_fraction: float = 0.1, kmeans_iters: int = 10):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.eps, self.dead_fraction, self.kmeans_iters = decay, eps, dead_fraction, kmeans_iters
        self.register_buffer("embed", torch.randn(codebook_size, dim) * 0.02)  # (C, D) the codewords
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # (C,) EMA of assignment counts
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))  # (C, D) EMA of assigned sums
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("restarts", torch.tensor(0))  # how many dead codes were revived so far

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest codeword index for each vector: ``(..., D) -> (...)``."""
        flat = x.reshape(-1, self.dim).float()
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2 ; |x|^2 is the same for every e, so skip it
        dist = -2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return dist.argmin(dim=1).reshape(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codewords for indices: ``(...) -> (..., D)``."""
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def _init(self, flat: torch.Tensor) -> None:
        share = flat.shape[0] / self.codebook_size  # vectors per codeword if all were used equally
        self.embed.copy_(kmeans(flat, self.codebook_size, self.kmeans_iters))
        self.embed_sum.copy_(self.embed * share)
        self.cluster_size.fill_(share)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        onehot_counts = torch.bincount(codes, minlength=self.codebook_size).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)
        self.cluster_size.mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps never-chosen entries from dividing by zero
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead(flat)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        share = flat.shape[0] / self.codebook_size
        dead = self.cluster_size < self.dead_fraction * share
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = torch.randint(flat.shape[0], (n_dead,), device=flat.device)
        self.embed[dead] = flat[pick]
        self.embed_sum[dead] = flat[pick] * share
        self.cluster_size[dead] = share  # a fresh chance: counted as a fair share
        self.restarts += n_dead

    def forward(self, x: torch.Tensor) -> VQOutput:
        flat = x.reshape(-1, self.dim).float()
        if self.training and not bool(self.initted):
            self._init(flat.detach())
        codes = self.encode(x)
        quantized = self.decode(codes).to(x.dtype)
        if self.training:
            self._ema_update(flat.detach(), codes.reshape(-1))
        commit_loss = F.mse_loss(x, quantized.detach())
        quantized = x + (quantized - x).detach()  # straight-through estimator
        return VQOutput(quantized, codes, commit_loss)


@dataclass
class RVQOutput:
    quantized: torch.Tensor  # (B, F, D) sum of the chosen codewords over the codebooks used
    codes: torch.Tensor  # (B, F, K_used)
    commit_loss: torch.Tensor  # scalar, summed over the codebooks used


class ResidualVQ(nn.Module):
    """K codebooks in sequence, each quantizing the residual the previous ones left.

    ``forward(x, n_q)`` with ``x`` (B, F, D) uses the first ``n_q`` codebooks (all by default).
    In training, with probability ``dropout_p`` a batch uses a random ``n_q`` in 1..K
    (quantizer dropout), so that every prefix of the codes decodes.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, dropout_p: float = 0.0, **vq_kwargs):
        super().__init__()
        self.n_q, self.codebook_size, self.dropout_p = n_q, codebook_size, dropout_p
        self.layers = nn.ModuleList(VectorQuantizer(dim, codebook_size, **vq_kwargs) for _ in range(n_q))

    def _pick_n_q(self, n_q: int | None) -> int:
        if n_q is None:
            n_q = self.n_q
            if self.training and self.dropout_p > 0 and torch.rand(()) < self.dropout_p:
                n_q = int(torch.randint(1, self.n_q + 1, ()))
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be between 1 and {self.n_q}, got {n_q}")
        return n_q

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> RVQOutput:
        n_q = self._pick_n_q(n_q)
        residual, quantized = x, torch.zeros_like(x)
        codes, loss = [], x.new_zeros(())
        for layer in self.layers[:n_q]:
            out = layer(residual)
            # out.quantized is x + (q - x).detach(): subtracting it leaves a residual with no
            # gradient path, so the stack's output passes the decoder's gradient to x once.
            residual = residual - out.quantized
            quantized = quantized + out.quantized
            codes.append(out.codes)
            loss = loss + out.commit_loss
        return RVQOutput(quantized, torch.stack(codes, dim=-1), loss)

    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``(B, F, D) -> (B, F, n_q)`` codes, no codebook updates."""
        n_q = n_q or self.n_q
        residual, codes = x, []
        for layer in self.layers[:n_q]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c).to(x.dtype)
            codes.append(c)
        return torch.stack(codes, dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, F, k) -> (B, F, D)`` for any prefix k <= K of the codebooks."""
        if codes.shape[-1] > self.n_q:
            raise ValueError(f"got {codes.shape[-1]} codebooks, this RVQ has {self.n_q}")
        return sum(layer.decode(codes[..., i]) for i, layer in enumerate(self.layers[: codes.shape[-1]]))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, iters: int = 20) -> ResidualVQ:
        """Residual k-means on a fixed set of vectors ``x`` (N, D): the classic, gradient-free RVQ.

        Stage k clusters the residual left by stages 1..k-1. Used in chapter 02 on log-mel frames.
        """
        residual = x.float()
        for i, layer in enumerate(self.layers):
            layer.embed.copy_(kmeans(residual, self.codebook_size, iters, seed=i))
            layer.embed_sum.copy_(layer.embed)
            layer.cluster_size.fill_(1.0)
            layer.initted.fill_(True)
            residual = residual - layer.decode(layer.encode(residual))
        return self


class SplitRVQ(nn.Module):
    """Mimi's split quantizer: ``n_semantic`` codebook(s) for content, then an acoustic RVQ.

    The semantic codebook quantizes the latent first and is trained (by the codec) to carry
    phonetic content; the acoustic RVQ quantizes what is left. Mimi runs its acoustic RVQ on the
    latent in parallel, each branch with its own projections; we quantize the residual instead,
    so that codebook 0 is always the coarsest prefix and any prefix 1..K decodes.
    Quantizer dropout applies to the acoustic part only: codebook 0 is always kept in training.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, n_semantic: int = 1,
                 dropout_p: float = 0.0, **vq_kwargs):
        super().__init__()
        if not 1 <= n_semantic < n_q:
            raise ValueError(f"need 1 <= n_semantic < n_q, got n_semantic={n_semantic}, n_q={n_q}")
        self.n_q, self.n_semantic, self.codebook_size = n_q, n_semantic, codebook_size
        self.semantic = ResidualVQ(dim, n_semantic, codebook_size, **vq_kwargs)
        self.acoustic = ResidualVQ(dim, n_q - n_semantic, codebook_size, dropout_p=dropout_p, **vq_kwargs)

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> tuple[RVQOutput, torch.Tensor]:
        """Returns the output of all codebooks used and the semantic part alone ``(B, F, D)``."""
        if n_q is not None and not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be between 1 and {self.n_q}, got {n_q}")
        sem = self.semantic(x, min(n_q or self.n_q, self.n_semantic))
        if n_q is not None and n_q <= self.n_semantic:
            return sem, sem.quantized
        ac = self.acoustic(x - sem.quantized, None if n_q is None else n_q - self.n_semantic)
        out = RVQOutput(sem.quantized + ac.quantized, torch.cat([sem.codes, ac.codes], dim=-1),
                        sem.commit_loss + ac.commit_loss)
        return out, sem.quantized

    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``(B, F, D) -> (B, F, n_q)``; column 0 is the semantic code."""
        n_q = n_q or self.n_q
        sem = self.semantic.encode(x, min(n_q, self.n_semantic))
        if n_q <= self.n_semantic:
            return sem
        ac = self.acoustic.encode(x - self.semantic.decode(sem), n_q - self.n_semantic)
        return torch.cat([sem, ac], dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, F, k) -> (B, F, D)`` for any prefix k of the codebooks."""
        k = codes.shape[-1]
        if k > self.n_q:
            raise ValueError(f"got {k} codebooks, this quantizer has {self.n_q}")
        out = self.semantic.decode(codes[..., : min(k, self.n_semantic)])
        if k > self.n_semantic:
            out = out + self.acoustic.decode(codes[..., self.n_semantic:])
        return out
