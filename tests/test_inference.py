"""The fast path (inference.py) and a Conversation that keeps its state: same codes as the plain path."""

import dataclasses
import shutil

import pytest
import torch

from csm_lib.codec import PRESETS as CODEC_PRESETS
from csm_lib.codec import Codec
from csm_lib.generate import Conversation, Generator, Segment, load_generator
from csm_lib.inference import FastCSM, plain_frames
from csm_lib.model import CSM, PRESETS
from csm_lib.text import TextTokenizer

TEXTS = ["hello there", "how are you today", "fine thanks and you", "the weather is nice"]


@pytest.fixture(scope="module")
def gen() -> Generator:
    torch.manual_seed(0)
    tok = TextTokenizer.train(TEXTS, vocab_size=0)
    cfg = dataclasses.replace(PRESETS["tiny"], text_vocab_size=tok.vocab_size)
    cfg.backbone = dataclasses.replace(cfg.backbone, max_seq_len=200)
    return Generator(CSM(cfg), Codec(CODEC_PRESETS["tiny"]), tok)


@pytest.fixture(scope="module")
def reference() -> Generator:
    return load_generator()


def speech(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16_000 * seconds)) / 16_000
    return 0.1 * (torch.sin(2 * torch.pi * 180 * t) + 0.3 * torch.randn(len(t), generator=g))


def context() -> list[Segment]:
    return [Segment(0, "hello there", speech(0.8, 1)), Segment(1, "how are you today", speech(1.2, 2))]


def codes_of(frames) -> torch.Tensor:
    return torch.cat(list(frames)) if frames else torch.zeros(0, dtype=torch.long)


def same_as_plain(gen: Generator, text: str, speaker: int, ctx: list[Segment], ms: float, **kw) -> torch.Tensor:
    """Generator.frames (the fast path), checked against CSM.generate_frame in a loop; returns the codes (F, K)."""
    fast = codes_of(list(gen.frames(text, speaker, ctx, ms, **kw)))
    frames, mask = gen.prompt(text, speaker, ctx, int(ms // gen.frame_ms))
    plain = codes_of(plain_frames(gen.model, frames, mask, int(ms // gen.frame_ms), **kw))
    assert torch.equal(fast, plain)
    return fast


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("temperature,seed", [(0, None), (0.9, 3)])
def test_fast_path_gives_the_plain_paths_codes(gen, attention, temperature, seed):
    gen.fast = FastCSM(gen.model, attention=attention)
    try:
        codes = same_as_plain(gen, "fine thanks", 0, context(), 1600, temperature=temperature, topk=20, seed=seed)
    finally:
        gen.fast = FastCSM(gen.model)
    assert codes.shape == (20, 4)  # a random model never ends its turn


@pytest.mark.parametrize("temperature,seed", [(0, None), (0.9, 5)])
def test_fast_path_on_the_reference_model(reference, temperature, seed):
    """The trained model, with its own earlier turn as context: 40 frames, identical codes."""
    first = reference.generate("the far corners of the earth", 0, max_audio_length_ms=2000, temperature=0)
    ctx = [Segment(0, "the far corners of the earth", first)]
    codes = same_as_plain(reference, "he went home early", 1, ctx, 3200, temperature=temperature, seed=seed)
    assert len(codes) >= 5


def test_a_conversation_gives_the_stateless_codes(gen):
    ctx = context()
    conv = Conversation(gen)
    for seg in ctx:
        conv.add(seg)
    a = codes_of(list(conv.frames("fine thanks", 0, 800, seed=1)))
    b = codes_of(list(conv.frames("the weather is nice", 1, 800, seed=2)))
    a_ = codes_of(list(gen.frames("fine thanks", 0, ctx, 800, seed=1)))
    ctx2 = [*ctx, Segment(0, "fine thanks", codes=a.T)]
    b_ = codes_of(list(gen.frames("the weather is nice", 1, ctx2, 800, seed=2)))
    assert torch.equal(a, a_) and torch.equal(b, b_)
    frames, _ = gen.prompt("x", 0, [*ctx2, Segment(1, "the weather is nice", codes=b.T)], 0)
    assert conv.positions == frames.shape[1] - len(gen.tokenizer.encode("x", 0))  # the same layout
    assert [t.speaker for t in conv.turns] == [0, 1, 0, 1]


def test_a_turn_stopped_early_joins_the_conversation_as_far_as_it_went(gen):
    conv = Conversation(gen)
    conv.add(context()[0])
    it = conv.frames("fine thanks", 0, 1600, seed=1)
    first = [next(it) for _ in range(3)]
    it.close()  # the listener interrupted
    assert torch.equal(conv.turns[-1].codes, torch.cat(first).T)
    nxt = codes_of(list(conv.frames("hello there", 1, 400, seed=4)))
    ctx = [context()[0], Segment(0, "fine thanks", codes=torch.cat(first).T)]
    assert torch.equal(nxt, codes_of(list(gen.frames("hello there", 1, ctx, 400, seed=4))))


def test_a_long_conversation_drops_its_oldest_turns_like_the_stateless_path(gen):
    conv = Conversation(gen)
    ctx = context() * 3  # about 150 positions, in a 200-position window
    for seg in ctx:
        conv.add(seg)
    with pytest.warns(UserWarning, match="dropped its"):
        a = codes_of(list(conv.frames("fine thanks", 0, 1600, seed=1)))
    with pytest.warns(UserWarning, match="dropped the"):
        a_ = codes_of(list(gen.frames("fine thanks", 0, ctx, 1600, seed=1)))
    assert torch.equal(a, a_)
    assert conv.positions <= gen.model.cfg.backbone.max_seq_len


@pytest.mark.parametrize("chunk", [1, 3, 20])
def test_chunked_streaming_gives_the_same_audio(gen, chunk):
    kw = dict(context=context(), max_audio_length_ms=800, temperature=0.9, topk=20, seed=7)
    full = gen.generate("fine thanks", 0, **kw)
    chunks = list(gen.stream("fine thanks", 0, chunk_frames=chunk, **kw))
    assert len(chunks) == -(-10 // chunk) + 1  # ceil(10 frames / chunk), then the last 30 ms
    assert torch.allclose(torch.cat(chunks), full, atol=1e-4)
    conv = Conversation(gen)
    for seg in context():
        conv.add(seg)
    streamed = torch.cat(list(conv.stream("fine thanks", 0, 800, 0.9, 20, seed=7, chunk_frames=chunk)))
    assert torch.allclose(streamed, full, atol=1e-4)


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True])
def test_bad_chunk_sizes_are_refused(gen, chunk):
    with pytest.raises(ValueError, match="chunk_frames"):
        list(gen.stream("hi", 0, chunk_frames=chunk))


@pytest.mark.parametrize("codes,match", [
    (torch.zeros(3, 5, dtype=torch.long), "K=4"), (torch.zeros(4, 0, dtype=torch.long), "F>=1"),
    (torch.zeros(4, 5), "integers"), (torch.full((4, 5), 64), "0..63"), (torch.full((4, 5), -1), "0..63"),
])
def test_bad_codes_are_refused(gen, codes, match):
    with pytest.raises(ValueError, match=match):
        gen.generate("hi", 0, context=[Segment(0, "hello", codes=codes)])


def test_a_context_turn_needs_audio_or_codes(gen):
    with pytest.raises(ValueError, match="neither audio nor codes"):
        gen.generate("hi", 0, context=[Segment(0, "hello")])


def test_refresh_takes_the_models_new_weights(gen):
    model = CSM(gen.model.cfg)
    g = Generator(model, gen.codec, gen.tokenizer)
    before = codes_of(list(g.frames("hi", 0, max_audio_length_ms=400, temperature=0)))
    with torch.no_grad():
        model.codebook0_head.weight.zero_()
        model.audio_head.zero_()  # greedy now picks code 0 everywhere: the end-of-speech frame
    assert torch.equal(codes_of(list(g.frames("hi", 0, max_audio_length_ms=400, temperature=0))), before)
    g.refresh()
    assert list(g.frames("hi", 0, max_audio_length_ms=400, temperature=0)) == []


def test_int8_replaces_every_linear_and_stays_close(gen):
    from csm_lib.inference import int8

    q = int8(gen.fast)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert any(type(m) is torch.nn.Linear for m in gen.fast.modules())  # the original is untouched
    frames, mask = gen.prompt("fine thanks", 0, context(), 10)
    a, b = gen.fast.new_cache(1, 100), q.new_cache(1, 100)
    ha, hb = gen.fast.prefill(frames, mask, a), q.prefill(frames, mask, b)
    la, lb = gen.fast.codebook0_head(ha), q.codebook0_head(hb)
    assert (la - lb).abs().max() < 0.1 * la.abs().max()  # 8-bit weights: close, not equal


def test_frame_cost_of_the_reference_model():
    from csm_lib.bench.inference import frame_cost

    ref = frame_cost(PRESETS["reference"], context=100)
    assert 15 < ref["MFLOP"] < 20  # ~18 MFLOP per frame, mostly matvecs: 2 x the weights read
    params = CSM(PRESETS["reference"]).num_parameters()
    assert ref["weight_MB"] * 1e6 / 4 < params["total"]  # the embedding tables are looked up, not read
    longer = frame_cost(PRESETS["reference"], context=2000)
    assert longer["MFLOP"] > ref["MFLOP"] and longer["weight_MB"] == ref["weight_MB"]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (.ci/run installs g++)")
def test_compiled_frame_decoding_gives_the_same_codes(gen):
    fast = FastCSM(gen.model)
    compiled = FastCSM(gen.model).compile()
    frames, mask = gen.prompt("fine thanks", 0, context(), 10)
    for temperature, seed in ((0, 0), (0.9, 4)):
        out = []
        for f in (fast, compiled):
            # caches of two sizes: the compiled backbone (dynamic shapes) serves both
            cache, g = f.new_cache(1, frames.shape[1] + 10 + 30 * seed), torch.Generator().manual_seed(seed)
            h, codes = f.prefill(frames, mask, cache), []
            for i in range(6):
                if i:
                    h = f.feed(codes[-1], cache)
                codes.append(f.frame(h, temperature, 20, g))
            out.append(torch.cat(codes))
        assert torch.equal(*out)


def test_the_fast_path_refuses_to_overflow_its_cache(gen):
    fast = FastCSM(gen.model)
    frames, mask = gen.prompt("fine thanks", 0, context(), 10)
    with pytest.raises(ValueError, match="KV cache holds"):
        fast.prefill(frames, mask, fast.new_cache(1, frames.shape[1] - 1))
