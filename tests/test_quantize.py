"""Vector quantization: k-means, EMA codebooks, dead-code restart, residual and split RVQ."""

import pytest
import torch

from csm_lib.quantize import ResidualVQ, SplitRVQ, VectorQuantizer, codebook_usage, kmeans


def mixture(n: int, centres: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(centres), (n,), generator=g)
    return centres[idx] + std * torch.randn(n, centres.shape[1], generator=g)


def test_kmeans_finds_separated_centres():
    centres = torch.tensor([[5.0, 0], [-5, 0], [0, 5], [0, -5]])
    found = kmeans(mixture(2000, centres, 0.3), 4, iters=20)
    dist = torch.cdist(centres, found).min(dim=1).values
    assert dist.max() < 0.1, dist


def test_reconstruction_error_falls_with_each_added_codebook():
    x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    rvq = ResidualVQ(16, n_q=6, codebook_size=32).fit(x, iters=15)
    errors = [float((rvq.decode(rvq.encode(x, k)) - x).pow(2).mean()) for k in range(1, 7)]
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[-1] < 0.6 * errors[0], errors


def test_ema_codebook_converges_on_a_mixture():
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 4
    vq = VectorQuantizer(4, 16, decay=0.9)
    vq.initted.fill_(True)  # skip k-means: start from random codewords and let EMA (and restarts) do the work
    vq.embed.copy_(torch.randn(16, 4) * 0.01)
    vq.cluster_size.fill_(512 / 16)
    vq.train()
    for step in range(300):
        vq(mixture(512, centres, 0.2, seed=step))
    dist = torch.cdist(centres, vq.embed).min(dim=1).values
    assert dist.max() < 0.35, dist  # every component has a codeword inside it (centres are ~4 apart)
    x = mixture(2048, centres, 0.2, seed=999)
    distortion = (vq.decode(vq.encode(x)) - x).pow(2).sum(1).mean()
    assert distortion < 4 * 0.2**2  # no worse than the noise itself (D * std^2 = 0.16)


def test_dead_codes_are_restarted_onto_the_data():
    torch.manual_seed(0)
    x = mixture(1024, torch.randn(16, 8), 0.1)
    vq = VectorQuantizer(8, 16, decay=0.8)
    vq.train()
    vq(x)  # k-means initialisation
    vq.embed[:4] = 1e3  # four codewords no vector will ever choose
    vq.embed_sum[:4] = 1e3 * vq.cluster_size[:4, None]
    for _ in range(30):
        vq(x)
    assert int(vq.restarts) >= 4
    assert vq.embed.abs().max() < 100  # every codeword is back near the data
    assert codebook_usage(vq.encode(x), 16)["used"] == 1.0


def test_straight_through_gradient_reaches_the_input_once():
    torch.manual_seed(0)
    for q in (ResidualVQ(8, 4, 16), SplitRVQ(8, 4, 16)):
        q.train()
        x = torch.randn(2, 10, 8, requires_grad=True)
        out = q(x)
        out = out[0] if isinstance(out, tuple) else out
        out.quantized.sum().backward()
        assert torch.allclose(x.grad, torch.ones_like(x)), type(q).__name__


def test_commitment_loss_is_the_distance_to_the_codewords():
    vq = VectorQuantizer(4, 8)
    vq.train()
    x = torch.randn(64, 4)
    vq(x)
    vq.eval()
    out = vq(x)
    assert torch.isclose(out.commit_loss, (x - vq.decode(out.codes)).pow(2).mean())


def test_quantizer_dropout_trains_with_every_prefix_and_keeps_the_semantic_code():
    torch.manual_seed(0)
    rvq = SplitRVQ(8, n_q=6, codebook_size=16, dropout_p=1.0)
    rvq.train()
    seen = {rvq(torch.randn(4, 5, 8))[0].codes.shape[-1] for _ in range(60)}
    assert seen == {2, 3, 4, 5, 6}  # codebook 0 always, then 1..5 acoustic codebooks
    rvq.eval()
    x = torch.randn(2, 5, 8)
    codes = rvq.encode(x)
    assert codes.shape == (2, 5, 6)
    assert torch.equal(rvq(x)[0].codes, codes)
    for k in range(1, 7):  # any prefix decodes, and more codes reconstruct better on its data
        assert rvq.decode(codes[..., :k]).shape == x.shape


def test_codebook_usage_and_perplexity():
    uniform = torch.arange(64).repeat(10)
    u = codebook_usage(uniform, 64)
    assert u["used"] == 1.0 and abs(u["perplexity"] - 64) < 1e-6 and abs(u["bits"] - 6) < 1e-9
    one = codebook_usage(torch.zeros(100, dtype=torch.long), 64)
    assert one["used"] == 1 / 64 and abs(one["perplexity"] - 1) < 1e-9


def test_bad_arguments_say_what_is_expected():
    rvq = ResidualVQ(4, 3, 8)
    with pytest.raises(ValueError, match="n_q must be between 1 and 3"):
        rvq(torch.randn(1, 2, 4), n_q=4)
    with pytest.raises(ValueError, match="this RVQ has 3"):
        rvq.decode(torch.zeros(1, 2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="n_semantic"):
        SplitRVQ(4, n_q=2, codebook_size=8, n_semantic=2)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kmeans(torch.randn(3, 4, 5), 2)
