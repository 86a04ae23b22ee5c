"""Speculative decoding (speculative.py): the draft, the agreement rule, and greedy codes unchanged."""

import pytest
import torch

from csm_lib.inference import FastCSM
from csm_lib.model import CSM, PRESETS
from csm_lib.speculative import agree, distribution, draft_frames, speculative_frames


@pytest.fixture(scope="module")
def fast() -> FastCSM:
    torch.manual_seed(0)
    return FastCSM(CSM(PRESETS["tiny"]).eval())


def prompt(K: int = 4, S: int = 30):
    frames = torch.randint(1, 64, (1, S, K + 1), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(frames, dtype=torch.bool)
    mask[..., K] = False
    return frames, mask


def test_draft_is_what_followed_the_latest_match():
    h = [torch.tensor([c, 9]) for c in [1, 2, 3, 4, 1, 2, 5, 6, 1, 2]]
    assert [int(f[0]) for f in draft_frames(h, ngram=2, d=3)] == [5, 6, 1]  # after the latest earlier "1 2"
    assert draft_frames(h, ngram=3, d=3) == []  # "6 1 2" never occurred before
    assert draft_frames(h[:2], ngram=2, d=3) == [] and draft_frames(h, 2, 0) == []


def test_agreement_keeps_each_code_with_its_probability():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p = distribution(logits, 1.0, 3)
    assert p[3] == 0 and torch.isclose(p.sum(), torch.tensor(1.0))
    assert agree(logits, 0, 0, 3, None) == (True, 0) and agree(logits, 1, 0, 3, None) == (False, 0)
    g = torch.Generator().manual_seed(0)
    draws = [agree(logits, 1, 1.0, 3, g) for _ in range(4000)]
    kept = sum(k for k, _ in draws) / len(draws)
    assert abs(kept - p[1].item()) < 0.03  # kept with probability p(x)
    codes = torch.tensor([c for _, c in draws])
    freq = torch.bincount(codes, minlength=4).float() / len(codes)
    assert torch.allclose(freq, p, atol=0.03)  # and every code still distributed as p


def test_greedy_speculative_decoding_gives_the_plain_codes(fast):
    frames, mask = prompt()
    stats = {}
    plain = torch.cat(list(speculative_frames(fast, frames, mask, 120, 0, 20, draft=0)))
    spec = torch.cat(list(speculative_frames(fast, frames, mask, 120, 0, 20, draft=4, stats=stats)))
    assert torch.equal(plain, spec)
    assert stats["drafted"] > 0 and 0 <= stats["kept"] <= stats["drafted"]
    assert stats["kept"] + stats["verify_passes"] + stats["plain_steps"] >= 120  # every frame accounted for


def test_draft_zero_is_plain_sampling(fast):
    frames, mask = prompt()
    a = torch.cat(list(speculative_frames(fast, frames, mask, 30, 0.9, 20, seed=3, draft=0)))
    cache = fast.new_cache(1, 60)
    h, g, b = fast.prefill(frames, mask, cache), torch.Generator().manual_seed(3), []
    for i in range(30):
        if i:
            h = fast.feed(b[-1], cache)
        b.append(fast.frame(h, 0.9, 20, g))
    assert torch.equal(a, torch.cat(b))
