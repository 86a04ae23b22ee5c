"""CSM's frame layout, the audio decoder and the amortized loss."""

import pytest
import torch

from csm_lib.backbone import TransformerConfig
from csm_lib.model import CSM, PRESETS, CSMConfig

K, V = 4, 32
CFG = CSMConfig(backbone=TransformerConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64),
                decoder=TransformerConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, max_seq_len=8),
                n_codebooks=K, audio_vocab_size=V, text_vocab_size=50)


def batch(seed: int = 0, n_text: int = 5, n_audio: int = 40):
    """One sequence: n_text text positions, then n_audio audio frames (the layout of a turn)."""
    g = torch.Generator().manual_seed(seed)
    S = n_text + n_audio
    frames = torch.zeros(2, S, K + 1, dtype=torch.long)
    mask = torch.zeros(2, S, K + 1, dtype=torch.bool)
    frames[:, :n_text, K] = torch.randint(50, (2, n_text), generator=g)
    mask[:, :n_text, K] = True
    frames[:, n_text:, :K] = torch.randint(V, (2, n_audio, K), generator=g)
    mask[:, n_text:, :K] = True
    return frames, mask


def test_a_frame_embeds_as_the_sum_of_its_codebook_embeddings():
    torch.manual_seed(0)
    model = CSM(CFG)
    frames, mask = batch()
    e = model.embed_frames(frames, mask)
    t = 10  # an audio position
    expected = sum(model.audio_embeddings.weight[frames[0, t, k] + k * V] for k in range(K))
    assert torch.allclose(e[0, t], expected, atol=1e-6)
    assert torch.allclose(e[0, 0], model.text_embeddings.weight[frames[0, 0, K]])  # a text position


def test_decoder_position_i_sees_only_codebooks_below_i():
    torch.manual_seed(0)
    model = CSM(CFG).eval()
    h, codes = torch.randn(3, 64), torch.randint(V, (3, K))
    a = model.decoder_logits(h, codes)
    codes2 = codes.clone()
    codes2[:, 2] = (codes2[:, 2] + 1) % V
    b = model.decoder_logits(h, codes2)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6)  # codebooks 1 and 2 do not see codebook 2
    assert not torch.allclose(a[:, 2], b[:, 2], atol=1e-4)  # codebook 3 does


def test_amortized_loss_trains_the_decoder_on_a_sixteenth_of_frames():
    torch.manual_seed(0)
    model = CSM(CFG)
    frames, mask = batch(n_audio=40)
    out = model(frames, mask, generator=torch.Generator().manual_seed(0))
    assert out["audio_frames"] == 2 * 40  # every audio frame after the first position is a target
    assert out["decoder_frames"] == round(80 / 16)
    assert torch.isfinite(out["loss"])
    full = CSM(CSMConfig(**{**vars(CFG), "decoder_fraction": 1.0}))
    assert full(frames, mask)["decoder_frames"] == 80


def test_every_part_gets_a_gradient():
    torch.manual_seed(0)
    model = CSM(CSMConfig(**{**vars(CFG), "decoder_fraction": 1.0}))
    model(*batch())["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    counts = model.num_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_bad_input_is_refused_with_the_expected_shape():
    model = CSM(CFG)
    frames, mask = batch()
    with pytest.raises(ValueError, match=r"\(B, S, 5\)"):
        model(frames[..., :K], mask[..., :K])
    text_only = mask.clone()
    text_only[..., :K] = False
    with pytest.raises(ValueError, match="no audio frame"):
        model(frames, text_only)
    with pytest.raises(ValueError, match="max_seq_len >= n_codebooks"):
        CSMConfig(decoder=TransformerConfig(dim=32, n_heads=2, n_kv_heads=1, max_seq_len=4), n_codebooks=8)


def _count(name: str) -> dict[str, int]:
    from csm_lib.model import PRESETS

    with torch.device("meta"):  # shapes only: no memory, no time
        return CSM(PRESETS[name]).num_parameters()


def test_paper_422m_has_422m_parameters():
    counts = _count("paper_422m")
    print({k: f"{v / 1e6:.1f}M" for k, v in counts.items()})
    assert abs(counts["total"] / 422e6 - 1) <= 0.01


def test_csm_1b_backbone_is_llama_3_2_1b_without_its_embedding_table():
    counts = _count("csm_1b")
    print({k: f"{v:,}" for k, v in counts.items()})
    llama_3_2_1b = 1_235_814_400  # published parameter count (tied input/output embeddings)
    assert counts["backbone"] == llama_3_2_1b - 128_256 * 2048
    assert counts["total"] == 1_552_791_552


def test_cached_generation_equals_uncached_and_matches_teacher_forcing():
    torch.manual_seed(0)
    model = CSM(CFG).eval()
    frames, mask = batch(n_audio=6)
    frames, mask = frames[:1], mask[:1]
    from csm_lib.backbone import KVCache

    cache = KVCache(CFG.backbone, batch_size=1)
    seq_f, seq_m = frames, mask
    new_f, new_m = frames, mask
    for _ in range(5):  # greedy: the cached path must give exactly the frames of the full recomputation
        cached = model.generate_frame(new_f, new_m, cache=cache, temperature=0)
        full = model.generate_frame(seq_f, seq_m, temperature=0)
        assert torch.equal(cached, full)
        new_f = torch.cat([cached, torch.zeros(1, 1, dtype=torch.long)], dim=1)[:, None]  # (1, 1, K+1)
        new_m = torch.cat([torch.ones(1, K, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool)], dim=1)[:, None]
        seq_f, seq_m = torch.cat([seq_f, new_f], dim=1), torch.cat([seq_m, new_m], dim=1)
    # the greedy decoder codes are the argmax of the teacher-forced decoder logits on those codes
    h = model.backbone(model.embed_frames(frames, mask))[:, -1]
    codes = model.generate_frame(frames, mask, temperature=0)
    logits = model.decoder_logits(h, codes)
    assert torch.equal(logits.argmax(-1), codes[:, 1:])
    assert torch.equal(model.codebook0_head(h).argmax(-1), codes[:, 0])


def test_topk_sampling_stays_in_the_top_k():
    from csm_lib.model import sample_topk

    logits = torch.arange(10.0).repeat(200, 1)
    s = sample_topk(logits, 1.0, 3, torch.Generator().manual_seed(0))
    assert set(s.tolist()) <= {7, 8, 9} and len(set(s.tolist())) == 3
    assert torch.equal(sample_topk(logits, 0, 3), torch.full((200,), 9))


def test_sampling_with_noise_drawn_beforehand_picks_what_multinomial_picks():
    """torch.multinomial draws one index as argmax(p / q), q ~ Exp(1): the same draws, made first, pick the same
    codes and leave the generator where multinomial leaves it (what the compiled fast path relies on)."""
    from csm_lib.model import sample_topk

    logits = torch.randn(3, 1024, generator=torch.Generator().manual_seed(1)) * 3
    for seed in range(50):
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        drawn = [sample_topk(logits, 0.9, 50, a) for _ in range(4)]
        noise = [torch.empty(3, 50).exponential_(1, generator=b) for _ in range(4)]
        assert all(torch.equal(x, sample_topk(logits, 0.9, 50, noise=q)) for x, q in zip(drawn, noise, strict=True))
        assert torch.equal(a.get_state(), b.get_state())
    flat = torch.zeros(1, 1024)  # uniform over the top 50: the noise alone decides, and every pick differs
    picks = {int(sample_topk(flat, 1.0, 50, noise=torch.empty(1, 50).exponential_(1))) for _ in range(200)}
    assert len(picks) > 40


def test_audio_dropout_only_in_training():
    import dataclasses

    cfg = dataclasses.replace(PRESETS["tiny"], audio_dropout=0.5)
    torch.manual_seed(0)
    model = CSM(cfg)
    K = cfg.n_codebooks
    frames = torch.randint(0, cfg.audio_vocab_size, (2, 12, K + 1))
    mask = torch.zeros_like(frames, dtype=torch.bool)
    mask[:, :4, K] = True
    mask[:, 4:, :K] = True
    model.eval()
    a = model(frames, mask, generator=torch.Generator().manual_seed(0))["loss"]
    b = model(frames, mask, generator=torch.Generator().manual_seed(0))["loss"]
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    c = model(frames, mask, generator=torch.Generator().manual_seed(0))["loss"]
    assert not torch.equal(a, c)
