"""The analytic training-memory model against its own arithmetic and against measured saved tensors."""

import pytest
import torch

from csm_lib.backbone import Block, rope_tables
from csm_lib.budget import block_activation_bytes, saved_tensor_bytes, training_memory
from csm_lib.model import CSM, PRESETS


@pytest.mark.parametrize("amp", [False, True])
def test_block_activation_model_matches_saved_tensors(amp):
    t = PRESETS["reference"].backbone
    torch.manual_seed(0)
    block = Block(t, 0)
    S = 200  # no activation shape collides with a weight's
    x = torch.randn(1, S, t.dim, requires_grad=True)
    cos, sin = rope_tables(t.head_dim, S, t.rope_theta)
    mask = torch.ones(S, S, dtype=torch.bool).tril()[None, None]
    measured = saved_tensor_bytes(lambda: block(x, cos[None], sin[None], mask), list(block.parameters()), amp)
    model = block_activation_bytes(t, amp) * S
    assert measured == pytest.approx(model, rel=0.15)


def test_training_memory_parts():
    cfg = PRESETS["paper_422m"]
    with torch.device("meta"):
        n = CSM(cfg).num_parameters()["total"]
    plain = training_memory(cfg, n, batch=2, seq_len=512)
    assert plain.weights + plain.gradients + plain.optimizer == 16 * n  # fp32 weights, grads, 2 Adam moments
    assert plain.optimizer_step == 4 * n  # the foreach step's sqrt(v) of every parameter
    assert training_memory(cfg, n, 2, 512, fused_adam=True).optimizer_step == 0
    assert plain.weight_copies == 2 * n and training_memory(cfg, n, 2, 512, amp=False).weight_copies == 0
    ckpt = training_memory(cfg, n, 2, 512, checkpointing=True)
    assert ckpt.weight_copies == 0  # recomputed with the block
    assert ckpt.activations < plain.activations / 4
    double = training_memory(cfg, n, 4, 512)
    assert double.activations == pytest.approx(2 * plain.activations)
    # the peak is the larger of the backward pass and the optimizer step, on top of the fixed 16 bytes/param
    assert ckpt.total == 16 * n + max(ckpt.activations + ckpt.logits, 4 * n)
    # the seed's claim in numbers: 422M fits 8 GB only with checkpointing and a fused AdamW step
    # (the default step's temporary alone takes it past 8 GB)
    fused = training_memory(cfg, n, 2, 512, checkpointing=True, fused_adam=True)
    assert plain.total > 8e9 and ckpt.total > 8e9 and fused.total < 7.5e9
    assert training_memory(cfg, n, 2, 512, fused_adam=True).total > 8e9


def test_fused_adam_needs_cuda():
    from csm_lib.train import TrainConfig, make_optimizer

    with pytest.raises(ValueError, match="CUDA"):
        make_optimizer(CSM(PRESETS["tiny"]), TrainConfig(fused_adam=True, device="cpu"))


def test_layout_keeps_turns_and_measure_runs_the_training_step():
    from csm_lib.budget import layout_turns, measure, turn_layout

    layout = [{"conversation": f"c{i // 3}", "turn": i % 3, "speaker": i % 2, "tokens": [5 + i, 6, 7],
               "audio_frames": 10 + i} for i in range(9)]
    cfg = PRESETS["tiny"]
    turns = layout_turns(layout, cfg.n_codebooks, cfg.audio_vocab_size)
    assert turn_layout(turns) == layout  # same text, lengths and conversations; only the codes are drawn
    assert all(t.frames.shape == (3 + 10 + i + 1, cfg.n_codebooks + 1) for i, t in enumerate(turns))
    r = measure(cfg, turns, micro_batch=2, seq_len=40, device="cpu", steps=2)
    assert r["fits"] and r["positions_per_s"] > 0 and r["longest"] <= 40
    assert r["max_allocated_gb"] is None  # no allocator statistics on a CPU
    # random codes: both losses start near chance, ln(64) nats each
    assert 2 * 3.5 < r["loss"] < 2 * 5.0
