"""The seed's ideas inside CSM (seed_model.py): causal, trainable, and — for the memory bank — earlier
turns reach the current one only through the memory."""

import dataclasses

import pytest
import torch

from csm_lib import checkpoint
from csm_lib import frames as Fr
from csm_lib.model import CSM, PRESETS
from csm_lib.seed_model import VARIANTS, SeedCSM, turn_ids
from csm_lib.train import TrainConfig, init_from

CFG = dataclasses.replace(PRESETS["tiny"], text_vocab_size=40)
K, V = CFG.n_codebooks, CFG.audio_vocab_size


def conversation(seed: int = 0, turns: int = 3):
    """Three turns of text then audio (with end of speech): frames and mask (1, S, K+1), turn starts."""
    g = torch.Generator().manual_seed(seed)
    parts, starts, n = [], [], 0
    for _ in range(turns):
        starts.append(n)
        text = Fr.text_frames(torch.randint(3, 40, (4,), generator=g).tolist(), K)
        audio = Fr.audio_frames(torch.randint(1, V, (K, 6), generator=g))
        parts += [text, audio]
        n += len(text[0]) + len(audio[0])
    f, m = Fr.concat(parts)
    return f[None], m[None], starts


@pytest.fixture(params=VARIANTS)
def model(request) -> SeedCSM:
    torch.manual_seed(0)
    return SeedCSM(CFG, request.param).eval()


def test_turn_ids_follow_the_layout():
    f, m, starts = conversation()
    ids = turn_ids(m)[0]
    assert ids[starts].tolist() == [0, 1, 2]
    assert all((ids[s:e] == i).all() for i, (s, e) in enumerate(zip(starts, [*starts[1:], len(ids)], strict=True)))


def test_no_position_reads_a_later_one(model):
    f, m, starts = conversation()
    h = model.hidden(model.embed_frames(f, m), m)
    f2 = f.clone()
    f2[0, starts[2] + 2:, :K] = (f2[0, starts[2] + 2:, :K] + 7) % V  # change the last turn's later audio
    h2 = model.hidden(model.embed_frames(f2, m), m)
    assert torch.allclose(h[0, : starts[2] + 2], h2[0, : starts[2] + 2], atol=1e-5)
    assert not torch.allclose(h[0, starts[2] + 2:], h2[0, starts[2] + 2:], atol=1e-5)


def test_memory_is_the_only_way_between_turns():
    torch.manual_seed(0)
    model = SeedCSM(CFG, "memory").eval()
    f, m, starts = conversation()
    f2 = f.clone()
    f2[0, : starts[1], :] = (f2[0, : starts[1], :] + 5) % 40 * m[0, : starts[1]]  # another first turn
    with torch.no_grad():
        last = lambda fr: model.hidden(model.embed_frames(fr, m), m)[0, starts[2]:]  # noqa: E731
        assert not torch.allclose(last(f), last(f2), atol=1e-5)  # the first turn reaches the third...
        model.memory.read = lambda h, state, mask=None: h  # ...and without the memory's read it cannot
        assert torch.allclose(last(f), last(f2), atol=1e-6)


def test_variants_train_and_generate(model):
    f, m, _ = conversation()
    out = model.train()(f, m, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    seed_params = model.cross_modal if model.variant == "cross_modal" else model.memory
    assert torch.isfinite(out["loss"]) and any(p.grad is not None and p.grad.abs().sum() > 0
                                               for p in seed_params.parameters())
    model.eval()
    a = torch.cat(list(model.frames(f, m, 4, temperature=0.9, seed=3, stop_at_end=False)))
    b = torch.cat(list(model.frames(f, m, 4, temperature=0.9, seed=3, stop_at_end=False)))
    assert a.shape == (4, K) and torch.equal(a, b)
    n = model.num_parameters()
    assert n["seed_layer"] == sum(p.numel() for p in seed_params.parameters()) > 0
    assert n["total"] == sum(p.numel() for p in model.parameters())
    # the first frame is the last prompt position's state, sampled as CSM samples
    h = model.hidden(model.embed_frames(f, m), m)[:, -1]
    assert torch.equal(model.sample_frame(h, 0.9, 50, torch.Generator().manual_seed(3)), a[:1])


def test_bad_variants_are_refused():
    with pytest.raises(ValueError, match="variant must be one of"):
        SeedCSM(CFG, "telepathy")
    with pytest.raises(ValueError, match="variant must be ''"):
        TrainConfig(variant="telepathy")
    with pytest.raises(ValueError, match="layer must be in"):
        SeedCSM(CFG, "memory", layer=CFG.backbone.n_layers)


def test_a_variant_starts_from_a_trained_plain_csm(tmp_path):
    torch.manual_seed(0)
    plain = CSM(CFG)
    checkpoint.save(tmp_path / "model", plain.state_dict(), {"kind": "csm", "steps": 7})
    variant = SeedCSM(CFG, "cross_modal")
    fresh = {k: v.clone() for k, v in variant.state_dict().items() if k.startswith("cross_modal.")}
    steps, _, _ = init_from(tmp_path / "model.safetensors", variant)
    assert steps == 7 and fresh
    assert all(torch.equal(v, variant.state_dict()[k]) for k, v in plain.state_dict().items())
    assert all(torch.equal(v, variant.state_dict()[k]) for k, v in fresh.items())  # the seed layer: as built
    with pytest.raises(ValueError, match="does not fit"):
        init_from(tmp_path / "model.safetensors", SeedCSM(dataclasses.replace(CFG, text_vocab_size=41), "memory"))
