"""The seed's architecture ideas: asymmetric cross-modal attention and the dual memory bank."""

import pytest
import torch

from csm_lib.backbone import TransformerConfig
from csm_lib.seed_variants import (
    AsymmetricCrossModalAttention,
    CrossModalConfig,
    DualMemoryBank,
    MemoryConfig,
    MemoryState,
    frame_deltas,
    kv_cache_floats,
    mean_pool,
    state_floats,
)

D = 32
XCFG = CrossModalConfig(dim=D, n_heads=4, pool=4)
MCFG = MemoryConfig(dim=D, n_heads=4, semantic_slots=3, prosodic_slots=2)


def assert_every_parameter_learns(module: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().max() > 0, f"{name} got an all-zero gradient"


def length_mask(lengths: list[int], total: int) -> torch.Tensor:
    """(B, total) bool, True at the first ``lengths[b]`` positions of row b."""
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]


# --- asymmetric cross-modal attention -----------------------------------------------------------------


def test_cross_modal_shapes_and_gradients():
    torch.manual_seed(0)
    layer = AsymmetricCrossModalAttention(XCFG)
    voice, text = torch.randn(2, 10, D), torch.randn(2, 5, D)
    voice_out, text_out = layer(voice, text)
    assert voice_out.shape == (2, 10, D) and text_out.shape == (2, 5, D)
    loss = (voice_out * torch.randn_like(voice_out)).sum() + (text_out * torch.randn_like(text_out)).sum()
    assert_every_parameter_learns(layer, loss)


def test_mean_pool_ignores_padding_and_masks_empty_windows():
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1)  # frames 0..9, one channel
    mask = length_mask([6], 10)  # frames 6..9 are padding
    pooled, pooled_mask = mean_pool(x, mask, pool=4)  # windows 0-3, 4-7, 8-9
    assert pooled.flatten().tolist() == [1.5, 4.5, 0.0]  # (0+1+2+3)/4, (4+5)/2, nothing
    assert pooled_mask.flatten().tolist() == [True, True, False]


def test_cross_modal_padding_does_not_leak():
    torch.manual_seed(0)
    layer = AsymmetricCrossModalAttention(XCFG).eval()
    voice, text = torch.randn(2, 10, D), torch.randn(2, 5, D)
    voice_mask, text_mask = length_mask([10, 6], 10), length_mask([5, 3], 5)
    a_voice, a_text = layer(voice, text, voice_mask, text_mask)
    voice2, text2 = voice.clone(), text.clone()
    voice2[~voice_mask] = torch.randn(int((~voice_mask).sum()), D) * 100  # whatever sits in the padding
    text2[~text_mask] = torch.randn(int((~text_mask).sum()), D) * 100
    b_voice, b_text = layer(voice2, text2, voice_mask, text_mask)
    assert torch.allclose(a_voice[voice_mask], b_voice[voice_mask], atol=1e-5)
    assert torch.allclose(a_text[text_mask], b_text[text_mask], atol=1e-5)
    # padded positions pass through unchanged
    assert torch.equal(b_voice[~voice_mask], voice2[~voice_mask])
    assert torch.equal(b_text[~text_mask], text2[~text_mask])


def test_nothing_to_attend_to_gives_a_zero_update_not_nan():
    torch.manual_seed(0)
    layer = AsymmetricCrossModalAttention(XCFG)
    voice, text = torch.randn(2, 10, D), torch.randn(2, 5, D)
    no_text = torch.zeros(2, 5, dtype=torch.bool)
    voice_out, text_out = layer(voice, text, text_mask=no_text)
    assert torch.isfinite(voice_out).all() and torch.isfinite(text_out).all()
    assert torch.equal(voice_out, voice)  # voice had no key: unchanged
    no_voice = torch.zeros(2, 10, dtype=torch.bool)
    _, text_out = layer(voice, text, voice_mask=no_voice)
    assert torch.equal(text_out, text)
    (voice_out.sum() + text_out.sum()).backward()  # and the backward pass is finite too
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_attention_cost_counts_scores():
    cost = XCFG.attention_cost(100, 20)
    assert (cost.asymmetric, cost.symmetric) == (100 * 20 + 20 * 25, 2 * 100 * 20) == (2500, 4000)
    assert cost.saved == pytest.approx(0.375)
    assert XCFG.attention_cost(101, 20).asymmetric == 2020 + 20 * 26  # ceil(101 / 4) = 26 windows
    no_pooling = CrossModalConfig(dim=D, n_heads=4, pool=1).attention_cost(100, 20)
    assert no_pooling.asymmetric == no_pooling.symmetric


# --- the dual memory bank --------------------------------------------------------------------------


def test_memory_shapes_and_gradients():
    torch.manual_seed(0)
    bank = DualMemoryBank(MCFG)
    state = bank.init_state(2)
    assert state.semantic.shape == (2, 3, D) and state.prosodic.shape == (2, 2, D)
    state = bank.write(torch.randn(2, 7, D), state)
    out = bank.read(torch.randn(2, 4, D), state)
    assert out.shape == (2, 4, D)
    assert_every_parameter_learns(bank, (out * torch.randn_like(out)).sum())


def test_memory_size_is_constant_across_turns():
    torch.manual_seed(0)
    bank = DualMemoryBank(MCFG)
    state = bank.init_state(2)
    sizes = [state_floats(state)]
    for turn_len in (3, 11, 6):
        state = bank.write(torch.randn(2, turn_len, D), state)
        assert state.semantic.shape == (2, 3, D) and state.prosodic.shape == (2, 2, D)
        sizes.append(state_floats(state))
    assert sizes == [2 * (3 + 2) * D] * 4
    backbone = TransformerConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128)
    assert kv_cache_floats(backbone, seq_len=100) == 2 * 2 * 2 * 16 * 100  # grows with the context


def test_memory_carries_information_between_turns():
    torch.manual_seed(0)
    bank = DualMemoryBank(MCFG).eval()
    start = bank.init_state(1)
    after_a = bank.write(torch.randn(1, 8, D), start)
    after_b = bank.write(torch.randn(1, 8, D), start)
    h = torch.randn(1, 5, D)
    assert not torch.allclose(bank.read(h, after_a), bank.read(h, after_b), atol=1e-4)
    assert not torch.allclose(after_a.prosodic, after_b.prosodic, atol=1e-4)


def test_closed_write_gate_keeps_the_initial_state():
    torch.manual_seed(0)
    bank = DualMemoryBank(MCFG)
    with torch.no_grad():
        bank.semantic_writer.gate.bias.fill_(-1e4)
        bank.prosodic_writer.gate.bias.fill_(-1e4)
    start = bank.init_state(2)
    state = bank.write(torch.randn(2, 8, D), start)
    assert torch.equal(state.semantic, start.semantic) and torch.equal(state.prosodic, start.prosodic)


def test_memory_write_and_read_ignore_padding():
    torch.manual_seed(0)
    bank = DualMemoryBank(MCFG).eval()
    start = bank.init_state(2)
    turn = torch.randn(2, 8, D)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False  # right padding
    mask[1, :2] = False  # left padding
    turn2 = turn.clone()
    turn2[~mask] = torch.randn(int((~mask).sum()), D) * 100
    a, b = bank.write(turn, start, mask), bank.write(turn2, start, mask)
    assert torch.allclose(a.semantic, b.semantic, atol=1e-5) and torch.allclose(a.prosodic, b.prosodic, atol=1e-5)
    # a fully padded turn leaves the memory as it was
    empty = bank.write(turn, start, torch.zeros(2, 8, dtype=torch.bool))
    assert torch.equal(empty.semantic, start.semantic) and torch.equal(empty.prosodic, start.prosodic)
    # read: padded positions come back unchanged
    out = bank.read(turn2, a, mask)
    assert torch.equal(out[~mask], turn2[~mask]) and torch.isfinite(out).all()


def test_memory_read_is_position_wise():
    """Each position reads the memory only, so no causal mask is needed within a turn."""
    torch.manual_seed(0)
    bank = DualMemoryBank(MCFG).eval()
    state = bank.write(torch.randn(1, 6, D), bank.init_state(1))
    h = torch.randn(1, 6, D)
    h2 = h.clone()
    h2[:, 3] = torch.randn(D)
    a, b = bank.read(h, state), bank.read(h2, state)
    others = [0, 1, 2, 4, 5]
    assert torch.allclose(a[:, others], b[:, others], atol=1e-6)


def test_frame_deltas():
    x = torch.tensor([[1.0, 4.0, 9.0, 16.0]])[..., None]  # (1, 4, 1)
    assert frame_deltas(x).flatten().tolist() == [0.0, 3.0, 5.0, 7.0]
    mask = torch.tensor([[False, True, True, True]])  # frame 1 has no real previous frame
    assert frame_deltas(x, mask).flatten().tolist() == [0.0, 0.0, 5.0, 7.0]


# --- refusals --------------------------------------------------------------------------------------


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match=r"dim \(30\) must be divisible by n_heads \(4\)"):
        CrossModalConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="pool .* must be >= 1; got 0"):
        CrossModalConfig(dim=D, n_heads=4, pool=0)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MemoryConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="at least one slot; got semantic_slots=0"):
        MemoryConfig(dim=D, n_heads=4, semantic_slots=0)
    with pytest.raises(ValueError, match="prosodic_slots=0"):
        MemoryConfig(dim=D, n_heads=4, prosodic_slots=0)


def test_shape_mismatches_are_refused():
    torch.manual_seed(0)
    layer, bank = AsymmetricCrossModalAttention(XCFG), DualMemoryBank(MCFG)
    voice = torch.randn(2, 10, D)
    with pytest.raises(ValueError, match=r"text .* must have shape \(2, St, 32\); got \(2, 5, 16\)"):
        layer(voice, torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"must have shape \(2, St, 32\); got \(3, 5, 32\)"):
        layer(voice, torch.randn(3, 5, D))
    with pytest.raises(ValueError, match=r"voice must have shape \(B, Sv, 32\); got \(10, 32\)"):
        layer(voice[0], torch.randn(2, 5, D))
    with pytest.raises(ValueError, match=r"voice_mask must be a bool tensor of shape \(2, 10\)"):
        layer(voice, torch.randn(2, 5, D), voice_mask=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"text_mask must be a bool tensor"):
        layer(voice, torch.randn(2, 5, D), text_mask=torch.ones(2, 5))
    state = bank.init_state(2)
    with pytest.raises(ValueError, match=r"h must have shape \(B, S, 32\); got \(2, 4, 16\)"):
        bank.read(torch.randn(2, 4, 16), state)
    with pytest.raises(ValueError, match=r"state.semantic must have shape \(3, 3, 32\); got \(2, 3, 32\)"):
        bank.write(torch.randn(3, 4, D), state)
    with pytest.raises(ValueError, match=r"state.prosodic must have shape \(2, 2, 32\)"):
        bank.read(torch.randn(2, 4, D), MemoryState(state.semantic, torch.randn(2, 5, D)))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bank.init_state(0)
