"""Low-rank adapters (csm_lib/lora.py): start as the model, train only themselves, merge into the same function."""

import pytest
import torch

from csm_lib import lora
from csm_lib.model import CSM
from csm_lib.train import TrainConfig, make_optimizer
from tests.test_model import CFG, batch


def model(seed: int = 0) -> CSM:
    torch.manual_seed(seed)
    return CSM(CFG).eval()


def logits(m: CSM, frames, mask) -> torch.Tensor:
    with torch.no_grad():
        h = m.hidden(m.embed_frames(frames, mask), mask)
        return m.codebook0_head(h)


def test_adapted_model_starts_as_the_model():
    frames, mask = batch()
    m = model()
    before = logits(m, frames, mask)
    counts = lora.add_adapters(m, rank=4, alpha=8)
    assert torch.equal(logits(m, frames, mask), before)  # B = 0: the detour adds exactly nothing
    n_layers = CFG.backbone.n_layers + CFG.decoder.n_layers
    assert sum(isinstance(x, lora.LoRALinear) for x in m.modules()) == 7 * n_layers
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n or n.startswith("text_embeddings")}
    assert "text_embeddings.weight" in trainable and counts["trainable"] < counts["frozen"] / 5


def test_only_adapters_move_and_merging_keeps_the_function():
    frames, mask = batch()
    m = model()
    frozen = {n: p.detach().clone() for n, p in m.named_parameters()}
    lora.add_adapters(m, rank=4, alpha=8)
    m.train()
    opt = make_optimizer(m, TrainConfig(lr=1e-2, amp="fp32"))
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in m.parameters())
    losses = []
    for _ in range(15):
        loss = m(frames, mask, generator=torch.Generator().manual_seed(0), decoder_fraction=1.0)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1  # the adapters learn
    m.eval()
    adapted = logits(m, frames, mask)
    assert lora.merge_adapters(m) == 7 * (CFG.backbone.n_layers + CFG.decoder.n_layers)
    assert not any(isinstance(x, lora.LoRALinear) for x in m.modules())
    torch.testing.assert_close(logits(m, frames, mask), adapted, atol=1e-4, rtol=1e-4)
    state = m.state_dict()
    assert set(state) == set(model().state_dict())  # an ordinary CSM checkpoint again
    moved = [n for n, p in frozen.items() if not torch.equal(state[n], p)]
    assert moved and all(n.endswith("_proj.weight") or n.startswith("text_embeddings") for n in moved)
    assert torch.equal(state["audio_embeddings.weight"], frozen["audio_embeddings.weight"])


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank must be at least 1"):
        lora.add_adapters(model(), rank=0)
