"""The latency table's baselines: TokenLM, VALL-E-style and AudioLM-style staging, their training losses."""

from dataclasses import asdict

import pytest
import torch

from csm_lib import checkpoint
from csm_lib.backbone import Transformer, TransformerConfig
from csm_lib.baselines.audiolm import AudioLM, AudioLMConfig, flatten, unflatten
from csm_lib.baselines.token_lm import TokenLM, TokenLMConfig
from csm_lib.baselines.train import audio_batch, build, load, loss, sizes
from csm_lib.baselines.valle import VallE, VallEConfig

K, V, TV = 8, 16, 12


def t(dim=32, layers=1):
    return TransformerConfig(dim, layers, 4, 2, 2 * dim, max_seq_len=256)


def rows(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(TV, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g),
             torch.randint(V, (K, int(torch.randint(2, 6, (1,), generator=g))), generator=g)) for _ in range(n)]


def test_flatten_roundtrip_and_order():
    codes = torch.arange(12).reshape(3, 4)  # 3 codebooks, 4 frames
    assert flatten(codes).tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]  # frame by frame
    assert torch.equal(unflatten(flatten(codes), 3), codes)


def test_causal_and_bidirectional_attention():
    torch.manual_seed(0)
    body = Transformer(t()).eval()
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[0, 5] += 1.0  # change the last position only
    with torch.no_grad():
        causal = (body(x) - body(y)).abs().amax(-1)[0]
        both = (body(x, causal=False) - body(y, causal=False)).abs().amax(-1)[0]
    assert causal[:5].max() == 0 and causal[5] > 0  # earlier positions cannot see it
    assert (both[:5] > 1e-6).all()  # a non-autoregressive pass sees every position


def test_token_lm_learns_a_sequence_and_respects_codebooks():
    torch.manual_seed(0)
    lm = TokenLM(TokenLMConfig(t(), prefix_vocab=TV, codes=V, period=3))
    prefix = torch.tensor([[1, 2, 3]])
    codes = torch.tensor([[5, 1, 9, 2, 2, 7]])  # two frames of 3 codebooks
    targets = lm.flat_ids(codes)
    assert targets.tolist() == [[5, 17, 41, 2, 18, 39]]
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        loss_ = lm(prefix, torch.tensor([3]), targets, torch.tensor([6]))
        first = first if first is not None else loss_.item()
        opt.zero_grad()
        loss_.backward()
        opt.step()
    assert loss_.item() < 0.1 * first
    lm.eval()
    out = lm.generate(prefix, 10, temperature=0)  # stops at END after the 6 it learnt
    assert out.tolist() == codes[0].tolist()
    sampled = lm.generate(prefix, 9, temperature=5.0, topk=V, stop_at_end=False,
                          generator=torch.Generator().manual_seed(0))
    assert len(sampled) == 9 and int(sampled.max()) < V  # a code of its codebook, offset removed


def test_token_lm_padding_does_not_change_the_loss():
    torch.manual_seed(0)
    lm = TokenLM(TokenLMConfig(t(), prefix_vocab=TV, codes=V)).eval()
    p, tg = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])
    alone = lm(p, torch.tensor([3]), tg, torch.tensor([2]))
    padded = lm(torch.tensor([[1, 2, 3, 0, 0]]), torch.tensor([3]), torch.tensor([[4, 5, 0, 0]]), torch.tensor([2]))
    assert torch.allclose(alone, padded, atol=1e-5)


def test_valle_and_audiolm_stage_shapes_and_losses():
    torch.manual_seed(0)
    valle = VallE(VallEConfig(ar=t(), nar=t(), n_codebooks=K, audio_vocab_size=V, text_vocab_size=TV)).eval()
    alm = AudioLM(AudioLMConfig(semantic=t(), coarse=t(), fine=t(), n_codebooks=K, audio_vocab_size=V,
                                text_vocab_size=TV)).eval()
    text = torch.tensor([[1, 4, 5, 2]])
    for m in (valle, alm):
        c = m.codes(text, 7, temperature=0, stop_at_end=False)
        assert c.shape == (1, K, 7) and int(c.max()) < V
    b = audio_batch(rows())
    for name, m in (("valle", valle), ("audiolm", alm)):
        parts = loss(m.train(), name, b, torch.Generator().manual_seed(0))
        assert torch.isfinite(parts["loss"]) and parts["loss"] > 0
        assert abs(parts["loss"].item() - sum(v.item() for k, v in parts.items() if k != "loss")) < 1e-4
        parts["loss"].backward()
        assert all(p.grad is not None for p in m.parameters())  # every stage trains


def test_nar_text_left_padding_matches_the_unpadded_row():
    torch.manual_seed(0)
    valle = VallE(VallEConfig(ar=t(), nar=t(), n_codebooks=K, audio_vocab_size=V, text_vocab_size=TV)).eval()
    r = rows(2)
    b = audio_batch(r)
    one = audio_batch(r[:1])
    stage = torch.tensor([2, 2])
    pos = torch.arange(b["text_left"].shape[1] + b["codes"].shape[2])[None]
    P = b["text_left"].shape[1]
    valid = torch.where(pos < P, pos >= P - b["text_len"][:, None], pos - P < b["n"][:, None])
    with torch.no_grad():
        both = valle.nar.logits(b["text_left"], b["codes"], stage, valid)[0, : r[0][1].shape[1]]
        alone = valle.nar.logits(one["text_left"], one["codes"], stage[:1])[0]
    # RoPE depends on distances only, and left padding keeps the text right against the frames
    assert both.shape == alone.shape and torch.allclose(both, alone, atol=1e-4)


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = VallEConfig(ar=t(), nar=t(), n_codebooks=K, audio_vocab_size=V, text_vocab_size=TV)
    m = VallE(cfg)
    checkpoint.save(tmp_path / "v", m.state_dict(), {"kind": "valle", "config": asdict(cfg)})
    back, meta = load(tmp_path / "v.safetensors")
    assert meta["kind"] == "valle" and all(torch.equal(a, b) for a, b in
                                           zip(m.state_dict().values(), back.state_dict().values(), strict=True))
    checkpoint.save(tmp_path / "x", m.state_dict(), {"kind": "csm"})
    with pytest.raises(ValueError, match="not a baseline"):
        load(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="unknown system"):
        build("tacotron", {})


def test_sizes_match_the_reference_csm():
    from dataclasses import replace

    from csm_lib.model import CSM, PRESETS
    csm = CSM(replace(PRESETS["reference"], text_vocab_size=72)).num_parameters()["total"]
    for name, n in sizes(72).items():
        assert abs(n / csm - 1) < 0.05, (name, n, csm)


# --- the latency benchmark's pieces (bench/latency.py), on tiny models ---------------------------------


@pytest.fixture(scope="module")
def tiny_systems():
    import dataclasses

    from csm_lib.bench.latency import speakers
    from csm_lib.codec import PRESETS as CODEC_PRESETS
    from csm_lib.codec import Codec
    from csm_lib.generate import Generator, Segment
    from csm_lib.model import CSM, PRESETS
    from csm_lib.text import TextTokenizer

    torch.manual_seed(0)
    tok = TextTokenizer.train(["hello there", "how are you today"], vocab_size=0)
    codec = Codec(CODEC_PRESETS["tiny"])
    cfg = dataclasses.replace(PRESETS["tiny"], text_vocab_size=tok.vocab_size, n_codebooks=codec.cfg.n_q,
                              audio_vocab_size=codec.cfg.codebook_size)
    gen = Generator(CSM(cfg), codec, tok)
    valle = VallE(VallEConfig(ar=t(), nar=t(), n_codebooks=codec.cfg.n_q, audio_vocab_size=codec.cfg.codebook_size,
                              text_vocab_size=tok.vocab_size)).eval()
    g = torch.Generator().manual_seed(0)
    ctx = [Segment(0, "hello there", 0.1 * torch.randn(8000, generator=g)),
           Segment(1, "how are you today", 0.1 * torch.randn(8000, generator=g))]
    return gen, speakers(gen, {"valle": valle, "audiolm": valle}), ctx


def test_every_system_speaks_the_same_length_and_only_csm_streams(tiny_systems):
    from csm_lib.bench.latency import run_system

    gen, fns, ctx = tiny_systems
    n = 6
    lengths, chunks = {}, {}
    for name, fn in fns.items():
        out = list(run_system(name, fn, gen, "hello", 0, ctx, n, seed=0))
        lengths[name], chunks[name] = sum(len(c) for c in out), len(out)
        assert all(torch.isfinite(c).all() for c in out)
    assert len(set(lengths.values())) == 1, lengths  # the same reply length for every system
    assert chunks["csm"] == chunks["csm_stateless"] == n + 1  # a chunk per frame, then the decoder's tail
    assert chunks["pipeline"] == chunks["valle"] == 1  # non-streaming: the whole reply at once


def test_csm_keeps_the_conversation_up_to_the_users_turn(tiny_systems):
    from csm_lib.bench.latency import run_system

    gen, fns, ctx = tiny_systems
    kept = torch.cat(list(run_system("csm", fns["csm"], gen, "hello", 0, ctx, 5, seed=3)))
    stateless = torch.cat(list(run_system("csm_stateless", fns["csm_stateless"], gen, "hello", 0, ctx, 5, seed=3)))
    assert torch.allclose(kept, stateless, atol=1e-5)  # the same reply, whether the context was kept or re-run


def test_cost_model_orders_the_staging():
    from csm_lib.baselines.train import configs
    from csm_lib.bench.latency import cost_before_first_sample, fit_cost
    from csm_lib.model import PRESETS as CSM_PRESETS

    cfgs = {"csm": CSM_PRESETS["reference"], **configs(72)}
    for n in (12, 60, 250):
        steps = {s: cost_before_first_sample(s, cfgs, n)["sequential_steps"] for s in ("csm", "pipeline", "valle",
                                                                                       "audiolm")}
        assert steps["csm"] == 8  # the prompt's prefill, then K-1 decoder steps: independent of n
        assert steps["pipeline"] == 8 * n and steps["valle"] == 1 + n + 7 and steps["audiolm"] == 3 + 8 * n
    pts = [{"sequential_steps": s, "GFLOP": f, "measured_ms": 0.5 * s + 20 * f}
           for s, f in ((8, 0.1), (100, 1), (400, 3))]
    fit = fit_cost(pts)
    assert fit["ms_per_step"] == pytest.approx(0.5) and fit["ms_per_GFLOP"] == pytest.approx(20, rel=1e-3)
