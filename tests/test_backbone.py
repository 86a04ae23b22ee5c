"""The Llama-style transformer: RMSNorm, RoPE, grouped-query attention, KV cache."""

import pytest
import torch

from csm_lib.backbone import KVCache, RMSNorm, Transformer, TransformerConfig, apply_rope, rope_tables

CFG = TransformerConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64)


def test_rmsnorm_gives_unit_root_mean_square():
    x = torch.randn(3, 5, 64) * 7 + 2
    y = RMSNorm(64)(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)


def test_rope_scores_depend_only_on_the_distance():
    cos, sin = rope_tables(16, 64, theta=10_000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q.view(1, 1, 1, 16), cos[None, m:m + 1], sin[None, m:m + 1])
        kn = apply_rope(k.view(1, 1, 1, 16), cos[None, n:n + 1], sin[None, n:n + 1])
        return float((qm * kn).sum())

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    assert torch.allclose(apply_rope(q.view(1, 1, 1, 16), cos[None, :1], sin[None, :1]), q.view(1, 1, 1, 16))


def test_model_is_causal():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    h = torch.randn(2, 10, 64)
    h2 = h.clone()
    h2[:, 6:] = torch.randn(2, 4, 64)
    out, out2 = model(h), model(h2)
    assert torch.allclose(out[:, :6], out2[:, :6], atol=1e-6)
    assert not torch.allclose(out[:, 6:], out2[:, 6:], atol=1e-3)


def test_kv_cache_decoding_equals_the_full_forward():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    h = torch.randn(2, 12, 64)
    full = model(h)
    cache = KVCache(CFG, batch_size=2)
    prefix = model(h[:, :5], cache=cache)  # a prompt, then one position at a time
    steps = [model(h[:, i:i + 1], cache=cache) for i in range(5, 12)]
    incremental = torch.cat([prefix, *steps], dim=1)
    assert cache.length == 12
    assert (incremental - full).abs().max() < 1e-5


def test_padding_mask_hides_padded_positions():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    h = torch.randn(1, 8, 64)
    keep = torch.tensor([[False, False, True, True, True, True, True, True]])  # two left-pad positions
    a = model(h, padding_mask=keep)
    h2 = h.clone()
    h2[:, :2] = torch.randn(1, 2, 64)  # whatever sits in the padding must not matter
    b = model(h2, padding_mask=keep)
    assert torch.allclose(a[:, 2:], b[:, 2:], atol=1e-6)
    assert torch.isfinite(a).all()  # padded rows are finite too (they attend to themselves)


def test_grouped_query_attention_has_fewer_kv_parameters():
    gqa, mha = Transformer(CFG), Transformer(TransformerConfig(**{**vars(CFG), "n_kv_heads": 4}))
    attn = gqa.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 64) and attn.q_proj.weight.shape == (4 * 16, 64)
    assert gqa.num_parameters() < mha.num_parameters()


def test_bad_configs_and_overlong_sequences_are_refused():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        TransformerConfig(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerConfig(dim=60, n_heads=8, n_kv_heads=2)
    model = Transformer(CFG)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.randn(1, 65, 64))
    cache = KVCache(CFG, 1, max_len=4)
    with pytest.raises(ValueError, match="holds 4 positions"):
        model(torch.randn(1, 5, 64), cache=cache)
