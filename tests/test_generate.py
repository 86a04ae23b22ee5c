"""Generator: Sesame's generate/stream interface over CSM, the frame layout of turns, and bad input."""

import dataclasses
import itertools
import json
import math
import time

import pytest
import torch

from csm_lib import audio as A
from csm_lib import checkpoint
from csm_lib import frames as Fr
from csm_lib.codec import PRESETS as CODEC_PRESETS
from csm_lib.codec import Codec
from csm_lib.dataset import fingerprint
from csm_lib.generate import (
    REFERENCE_CODEC,
    REFERENCE_MODEL,
    REFERENCE_TEMPERATURE,
    SESAME_TEMPERATURE,
    Conversation,
    Generator,
    Segment,
    as_heard,
    chunk_sizes,
    load_generator,
    trained_speakers,
)
from csm_lib.model import CSM, PRESETS
from csm_lib.seed_model import SeedCSM
from csm_lib.text import N_SPEAKERS, TextTokenizer

TEXTS = ["hello there", "how are you today", "fine thanks and you", "the weather is nice"]


@pytest.fixture(scope="module")
def gen() -> Generator:
    torch.manual_seed(0)
    codec = Codec(CODEC_PRESETS["tiny"])  # 4 codebooks of 64, like the tiny model
    tok = TextTokenizer.train(TEXTS, vocab_size=0)  # bytes + specials
    cfg = dataclasses.replace(PRESETS["tiny"], text_vocab_size=tok.vocab_size)
    cfg.backbone = dataclasses.replace(cfg.backbone, max_seq_len=160)
    return Generator(CSM(cfg), codec, tok)


def speech(seconds: float, seed: int = 0, level: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16_000 * seconds)) / 16_000
    return level * (torch.sin(2 * torch.pi * 180 * t) + 0.3 * torch.randn(len(t), generator=g))


def context() -> list[Segment]:
    return [Segment(0, "hello there", speech(0.8, 1)), Segment(1, "how are you today", speech(1.2, 2))]


def test_generate_and_stream_give_the_same_codes_and_audio(gen):
    kw = dict(context=context(), max_audio_length_ms=800, temperature=0.9, topk=20, seed=7)
    codes_a = torch.stack(list(gen.frames("fine thanks", 0, **kw)))
    codes_b = torch.stack(list(gen.frames("fine thanks", 0, **kw)))
    assert torch.equal(codes_a, codes_b)
    other = torch.stack(list(gen.frames("fine thanks", 0, **{**kw, "seed": 8})))
    assert not torch.equal(codes_a, other)  # the seed matters
    full = gen.generate("fine thanks", 0, **kw)
    chunks = list(gen.stream("fine thanks", 0, **kw))
    n = len(codes_a)
    assert n == 10  # a random model never ends its turn: 800 ms / 80 ms frames
    assert len(chunks) == n + 1  # one chunk per frame, then the last 30 ms
    assert full.shape == (n * gen.codec.cfg.samples_per_frame,)
    assert torch.allclose(torch.cat(chunks), full, atol=1e-4)
    assert torch.allclose(gen.codec.decode(codes_a.permute(1, 2, 0))[0], full, atol=1e-6)


def test_chunk_sizes_double_from_the_first_chunk_up_to_chunk_frames():
    assert list(itertools.islice(chunk_sizes(8, 1), 6)) == [1, 2, 4, 8, 8, 8]
    assert list(itertools.islice(chunk_sizes(5, 2), 4)) == [2, 4, 5, 5]
    assert list(itertools.islice(chunk_sizes(3), 3)) == [3, 3, 3]  # no first chunk: today's fixed chunks
    for bad, match in (((0,), "chunk_frames must be"), ((2, 3), "must not exceed"), ((True,), "chunk_frames must be"),
                       ((4, 0), "first_chunk_frames must be")):
        with pytest.raises(ValueError, match=match):
            next(chunk_sizes(*bad))


def test_a_stream_whose_chunks_grow_is_the_same_audio(gen):
    kw = dict(context=context(), max_audio_length_ms=800, temperature=0.9, topk=20, seed=7)
    full = gen.generate("fine thanks", 0, **kw)
    chunks = list(gen.stream("fine thanks", 0, chunk_frames=4, first_chunk_frames=1, **kw))
    spf, tail = gen.codec.cfg.samples_per_frame, gen.codec.cfg.n_fft - gen.codec.cfg.hop
    # 10 frames as 1, 2, 4, then the 3 left; the first chunk waits 30 ms for the overlap-add, the last gives them
    assert [len(c) for c in chunks] == [spf - tail, 2 * spf, 4 * spf, 3 * spf, tail]
    assert torch.allclose(torch.cat(chunks), full, atol=1e-4)


def test_prompt_layout(gen):
    ctx = context()
    frames, mask = gen.prompt("fine thanks", 0, ctx, max_frames=10)
    K = gen.model.cfg.n_codebooks
    spf = gen.codec.cfg.samples_per_frame
    expected = [len(gen.tokenizer.encode(s.text, s.speaker)) + len(s.audio) // spf + 1 for s in ctx]
    turn = gen.tokenizer.encode("fine thanks", 0)
    assert frames.shape == (1, sum(expected) + len(turn), K + 1)
    assert frames[0, -len(turn):, K].tolist() == turn and mask[0, -len(turn):].sum(0).tolist() == [0] * K + [len(turn)]
    eos_at = expected[0] - 1  # each context turn ends with an all-zero audio frame
    assert mask[0, eos_at, :K].all() and Fr.is_end_of_speech(frames[0, eos_at, :K])
    # every position holds text only or audio only
    assert ((mask[0, :, :K].all(-1)) ^ mask[0, :, K]).all()


def test_context_loudness_is_normalised(gen):
    loud = Segment(0, "hello there", speech(0.8, 1, level=0.5))
    quiet = Segment(0, "hello there", speech(0.8, 1, level=0.05))
    assert torch.equal(gen.segment_frames(loud)[0], gen.segment_frames(quiet)[0])


def test_end_of_speech_frame_stops_generation(gen):
    model = CSM(gen.model.cfg)
    with torch.no_grad():  # all logits equal: greedy picks code 0 everywhere, the end-of-speech frame
        model.codebook0_head.weight.zero_()
        model.audio_head.zero_()
    g = Generator(model, gen.codec, gen.tokenizer)
    assert g.generate("hello", 1, temperature=0).numel() == 0
    assert list(g.stream("hello", 1, temperature=0)) == []


@pytest.mark.parametrize("text,speaker,match", [
    ("", 0, "non-empty"), ("   ", 0, "non-empty"), ("hi", 8, "unknown speaker"), ("hi", -1, "unknown speaker"),
    ("hi", "0", "unknown speaker"),
])
def test_bad_turns_are_refused(gen, text, speaker, match):
    with pytest.raises(ValueError, match=match):
        gen.generate(text, speaker, max_audio_length_ms=160)


def test_bad_context_is_refused(gen):
    with pytest.raises(ValueError, match="24000 Hz; the codec expects 16000 Hz"):
        gen.generate("hi", 0, context=[Segment(0, "hello", speech(0.5), sample_rate=24_000)])
    with pytest.raises(ValueError, match="mono"):
        gen.generate("hi", 0, context=[Segment(0, "hello", speech(0.5)[None].repeat(2, 1))])
    with pytest.raises(ValueError, match="mono"):
        gen.generate("hi", 0, context=[Segment(0, "hello", torch.zeros(10))])
    with pytest.raises(ValueError, match="max_audio_length_ms"):
        gen.generate("hi", 0, max_audio_length_ms=0)


def test_too_long_context_drops_oldest_turns(gen):
    ctx = context() * 4  # 8 turns of about 20-30 positions each: more than the 160-position window
    with pytest.warns(UserWarning, match="dropped the"):
        frames, _ = gen.prompt("fine thanks", 0, ctx, max_frames=10)
    assert frames.shape[1] + 10 <= gen.model.cfg.backbone.max_seq_len
    last, _ = gen.segment_frames(ctx[-1])
    turn = len(gen.tokenizer.encode("fine thanks", 0))
    assert torch.equal(frames[0, -turn - len(last): -turn], last)  # the newest turn is kept
    with pytest.raises(ValueError, match="do not fit"):
        gen.generate("fine thanks", 0, max_audio_length_ms=80 * 200)


def test_codec_and_model_must_agree(gen):
    with pytest.raises(ValueError, match="codebooks"):
        Generator(gen.model, Codec(dataclasses.replace(CODEC_PRESETS["tiny"], n_q=2)), gen.tokenizer)


@pytest.mark.parametrize("bad,match", [(math.nan, "NaN"), (math.inf, "infinite")])
def test_non_finite_context_audio_is_refused(gen, bad, match):
    wav = speech(0.8, 1)
    wav[100] = bad
    with pytest.raises(ValueError, match=match):
        gen.segment_frames(Segment(0, "hello there", wav))


@pytest.mark.parametrize("wav", [torch.zeros(16_000), speech(1.0) * 1e-4], ids=["zeros", "peak-2e-5"])
def test_silent_context_audio_is_refused(gen, wav):
    with pytest.raises(ValueError, match="is silent .*expected speech"):
        gen.segment_frames(Segment(0, "hello there", wav))


@pytest.mark.parametrize("text,seconds", [("hi", 4.0), ("the weather is nice and the sun is out today", 0.1)])
def test_context_audio_of_implausible_length_for_its_text_warns(gen, text, seconds):
    with pytest.warns(UserWarning, match="per character of its text"):
        gen.segment_frames(Segment(0, text, speech(seconds)))


@pytest.mark.parametrize("kw,match", [
    ({"temperature": -0.1}, "temperature must be 0"),
    ({"temperature": 1e-300}, "at least|>= 0.01"), ({"temperature": math.nan}, "temperature"),
    ({"topk": 0}, "topk must be an integer >= 1"), ({"topk": 2.5}, "topk"),
    ({"max_audio_length_ms": 79}, "at least one frame"),
])
def test_bad_sampling_settings_are_refused(gen, kw, match):
    with pytest.raises(ValueError, match=match):
        gen.generate("hi", 0, **{"max_audio_length_ms": 160, **kw})


def test_speakers_the_model_was_not_trained_with_are_refused(gen):
    two = Generator(gen.model, gen.codec, gen.tokenizer, n_speakers=2)
    assert two.generate("hi", 1, max_audio_length_ms=80, seed=0).numel() <= gen.codec.cfg.samples_per_frame
    with pytest.raises(ValueError, match=r"unknown speaker 2: .*trained with the integer speakers 0\.\.1"):
        two.generate("hi", 2, max_audio_length_ms=80)
    with pytest.raises(ValueError, match="unknown speaker 3"):  # a context turn's speaker too
        two.generate("hi", 0, context=[Segment(3, "hello there", speech(0.8))], max_audio_length_ms=80)
    with pytest.raises(ValueError, match="n_speakers"):
        Generator(gen.model, gen.codec, gen.tokenizer, n_speakers=N_SPEAKERS + 1)
    assert trained_speakers({"data": {"n_speakers": 3}}) == 3
    assert trained_speakers({"data": {"corpus_config": {}}}) == 2  # this workbook's corpus, before it was recorded
    assert trained_speakers({}) == N_SPEAKERS


def test_prompt_longer_than_the_trained_window_warns(gen):
    short = Generator(gen.model, gen.codec, gen.tokenizer, trained_len=30)
    with pytest.warns(UserWarning, match="trained on windows of 30"):
        frames, _ = short.prompt("fine thanks", 0, context(), max_frames=10)
    assert 30 < frames.shape[1] <= gen.model.cfg.backbone.max_seq_len  # a warning, not a cut


def test_load_generator_checks_the_codec_and_reads_the_sidecar(gen, tmp_path):
    codec_path = checkpoint.save(tmp_path / "codec", gen.codec.state_dict(),
                                 {"kind": "codec", "config": dataclasses.asdict(gen.codec.cfg)})
    other = checkpoint.save(tmp_path / "other", Codec(CODEC_PRESETS["tiny"]).state_dict(),
                            {"kind": "codec", "config": dataclasses.asdict(gen.codec.cfg)})
    meta = {"kind": "csm", "config": dataclasses.asdict(gen.model.cfg),
            "data": {"codec": "codec.safetensors", "codec_fingerprint": fingerprint(codec_path), "n_speakers": 2},
            "train": {"max_len": 128}}
    model_path = checkpoint.save(tmp_path / "model", gen.model.state_dict(), meta)
    gen.tokenizer.save(tmp_path / "model.tokenizer.json")
    loaded = load_generator(model_path, codec_path)
    assert (loaded.n_speakers, loaded.trained_len) == (2, 128)
    kw = dict(context=context(), max_audio_length_ms=160, seed=3)
    assert torch.equal(loaded.generate("fine thanks", 0, **kw), gen.generate("fine thanks", 0, **kw))
    with pytest.raises(ValueError, match=r"trained with the codec codec.safetensors .*given, .*other.safetensors"):
        load_generator(model_path, other)
    checkpoint.save(tmp_path / "model", gen.model.state_dict(), {k: v for k, v in meta.items() if k != "data"})
    with pytest.warns(UserWarning, match="records no codec fingerprint"):
        load_generator(model_path, other)


@pytest.mark.skipif(not (REFERENCE_MODEL.exists() and REFERENCE_CODEC.exists()), reason="no reference checkpoints")
def test_load_generator_defaults_to_the_shipped_reference(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anywhere: the defaults do not depend on the working directory
    ref = load_generator()
    assert ref.n_speakers == 2 and ref.trained_len == 512
    assert ref.generate("hello there", 0, max_audio_length_ms=160, seed=0).dim() == 1
    # the plain call samples at the temperature chosen for the reference, not at Sesame's 0.9
    assert ref.temperature == REFERENCE_TEMPERATURE != SESAME_TEMPERATURE
    plain = torch.cat(list(ref.frames("hello there", 0, max_audio_length_ms=400, seed=0)))
    chosen = torch.cat(list(ref.frames("hello there", 0, max_audio_length_ms=400, temperature=REFERENCE_TEMPERATURE,
                                       seed=0)))
    sesame = torch.cat(list(ref.frames("hello there", 0, max_audio_length_ms=400, temperature=SESAME_TEMPERATURE,
                                       seed=0)))
    assert torch.equal(plain, chosen) and not torch.equal(plain, sesame)


def test_frame_helpers():
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (K=2, F=3)
    f, m = Fr.audio_frames(codes)
    assert f.tolist() == [[1, 4, 0], [2, 5, 0], [3, 6, 0], [0, 0, 0]]
    assert m.tolist() == [[True, True, False]] * 4
    t, tm = Fr.text_frames([9, 8], n_codebooks=2)
    assert t.tolist() == [[0, 0, 9], [0, 0, 8]] and tm[:, -1].all() and not tm[:, :2].any()
    bf, bm = Fr.pad_batch([(t, tm), (f, m)])
    assert bf.shape == (2, 4, 3) and not bm[0, 2:].any() and torch.equal(bf[1], f)
    with pytest.raises(ValueError, match=r"\(K, F\)"):
        Fr.audio_frames(codes[None])


def test_audio_runs_give_back_each_context_turns_codes(gen):
    ctx = context()
    frames, mask = gen.prompt("fine thanks", 0, ctx, max_frames=10)
    runs = Fr.audio_runs(frames[0], mask[0])
    codes = [gen.codec.encode(A.normalize_loudness(s.audio)[None])[0] for s in ctx]  # (K, F) per turn
    assert len(runs) == 2
    for run, c in zip(runs, codes, strict=True):
        assert torch.equal(run, c)
    assert Fr.audio_runs(*gen.text_frames("hello", 0)) == []  # text only: no audio to hear


def test_as_heard_puts_the_waits_in_the_audio():
    def chunks(delays):
        for d in delays:
            time.sleep(d)
            yield torch.ones(800)  # 50 ms at 16 kHz

    audio, info = as_heard(chunks([0.2, 0.0, 0.0]), 16_000)  # a late start, then no stall
    assert info["stalls"] == 0 and info["audio_s"] == pytest.approx(0.15)
    assert 195 < info["first_audio_ms"] < 400
    assert audio[: round(0.19 * 16_000)].abs().max() == 0  # the wait is silence
    assert audio.sum() == 3 * 800 and abs(audio.numel() - (info["first_audio_ms"] * 16 + 3 * 800)) <= 1
    audio, info = as_heard(chunks([0.0, 0.25]), 16_000)  # the second chunk comes 200 ms after the first ends
    assert info["stalls"] == 1 and 150 < info["stall_ms"] < 400
    assert info["last_audio_ms"] - info["first_audio_ms"] >= 250  # the stream's whole time, from the call
    assert as_heard(iter([]), 16_000)[1]["first_audio_ms"] is None


def test_a_seed_variant_loads_and_generates_through_the_generator(gen, tmp_path):
    torch.manual_seed(0)
    variant = SeedCSM(gen.model.cfg, "memory").eval()
    codec_path = checkpoint.save(tmp_path / "codec", gen.codec.state_dict(),
                                 {"kind": "codec", "config": dataclasses.asdict(gen.codec.cfg)})
    meta = {"kind": "csm", "config": dataclasses.asdict(gen.model.cfg),
            "data": {"codec": "codec.safetensors", "codec_fingerprint": fingerprint(codec_path), "n_speakers": 2},
            "train": {"max_len": 128, "variant": "memory"}}
    model_path = checkpoint.save(tmp_path / "model", variant.state_dict(), meta)
    gen.tokenizer.save(tmp_path / "model.tokenizer.json")
    loaded = load_generator(model_path, codec_path)
    assert isinstance(loaded.model, SeedCSM) and loaded.fast is None
    frames, mask = loaded.prompt("fine thanks", 0, context(), max_frames=3)
    direct = list(variant.frames(frames, mask, 3, temperature=0.9, topk=20, seed=3))
    assert torch.equal(torch.cat(list(loaded.frames("fine thanks", 0, context(), 240, 0.9, 20, seed=3))),
                       torch.cat(direct))
    with pytest.raises(ValueError, match="have none"):
        Conversation(loaded)
    with pytest.raises(ValueError, match="no fast path to compile"):
        loaded.compile()


def test_the_default_temperature_is_the_one_model_eval_chose_for_the_reference():
    sweep = json.loads((REFERENCE_MODEL.parents[1] / "results" / "temperature_sweep.json").read_text())
    model = json.loads(REFERENCE_MODEL.with_suffix(".json").read_text())
    assert sweep["measured_with"]["steps"] == model["steps"]  # chosen for the reference model shipped
    assert REFERENCE_TEMPERATURE == sweep["chosen"]
    ended = {t: r for t, r in sweep["temperatures"].items() if r["ended_by_eos"] >= 0.95}
    assert min(ended, key=lambda t: ended[t]["wer"]) == str(REFERENCE_TEMPERATURE)
