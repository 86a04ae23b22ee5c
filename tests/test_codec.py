"""The codec: shapes, causality, streaming decode equal to offline, checkpoints, bad input."""

from pathlib import Path

import pytest
import torch

from csm_lib import checkpoint
from csm_lib.codec import PRESETS, Codec, ReconstructionLoss, StreamingDecoder

REFERENCE = Path(__file__).resolve().parents[1] / "checkpoints" / "codec_reference.safetensors"


@pytest.fixture(scope="module")
def tiny() -> Codec:
    torch.manual_seed(0)
    codec = Codec(PRESETS["tiny"])
    codec.train()
    codec(torch.randn(4, 16_000) * 0.1)  # initialise the codebooks (k-means on the first batch)
    return codec.eval()


def test_shapes_and_frame_rate(tiny):
    cfg = tiny.cfg
    assert cfg.samples_per_frame == 1280 and cfg.stride == 8  # 12.5 Hz at 16 kHz, 10 ms analysis hop
    audio = torch.randn(2, 3 * 1280 + 100) * 0.1  # the 100 extra samples are cut off
    codes = tiny.encode(audio)
    assert codes.shape == (2, cfg.n_q, 3) and codes.dtype == torch.long
    assert tiny.decode(codes).shape == (2, 3 * 1280)
    assert tiny.decode(codes[:, :1]).shape == (2, 3 * 1280)  # any prefix of the codebooks decodes
    assert abs(PRESETS["reference"].kbps - 12.5 * 8 * 10 / 1000) < 1e-12


def test_encoder_and_decoder_are_causal(tiny):
    a = torch.randn(1, 6 * 1280) * 0.1
    b = a.clone()
    b[:, 4 * 1280:] = torch.randn(1, 2 * 1280)  # change only the last two frames' audio
    ca, cb = tiny.encode(a), tiny.encode(b)
    assert torch.equal(ca[..., :4], cb[..., :4])
    ya, yb = tiny.decode(ca), tiny.decode(cb)
    final = 4 * 1280 - (tiny.cfg.n_fft - tiny.cfg.hop)  # overlap-add: the last 30 ms still wait for frame 5
    assert torch.equal(ya[:, :final], yb[:, :final])
    assert not torch.equal(ya[:, final: 4 * 1280], yb[:, final: 4 * 1280])


@pytest.mark.parametrize("chunk", [1, 3])
def test_streaming_decode_equals_offline(tiny, chunk):
    codes = tiny.encode(torch.randn(2, 10 * 1280) * 0.1)
    offline = tiny.decode(codes)
    dec = StreamingDecoder(tiny, batch_size=2)
    pieces = [dec.push(codes[..., f:f + chunk]) for f in range(0, codes.shape[-1], chunk)] + [dec.flush()]
    assert pieces[0].shape[-1] == chunk * 1280 - (tiny.cfg.n_fft - tiny.cfg.hop)  # 30 ms of look-behind
    streamed = torch.cat(pieces, dim=-1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max() <= 1e-4


def test_compiled_streaming_decode_equals_offline():
    """Codec.compile_streaming (Generator.compile): the same audio, pushes of any size, depthwise convolutions
    as shifted products (CausalConv1d.depthwise) included."""
    codec = Codec(PRESETS["tiny"]).eval()
    codes = codec.encode(torch.randn(1, 7 * 1280) * 0.1)
    offline = codec.decode(codes)
    conv = codec.decoder[1].dwconv
    x = torch.randn(1, conv.in_channels, 6 + 5)
    assert torch.allclose(conv.depthwise(x), torch.nn.functional.conv1d(x, conv.weight, conv.bias, groups=conv.groups),
                          atol=1e-6)
    codec.compile_streaming()
    for sizes in ([1, 2, 4], [3, 3, 1]):
        dec, f, pieces = StreamingDecoder(codec), 0, []
        for n in sizes:
            pieces.append(dec.push(codes[..., f:f + n]))
            f += n
        assert (torch.cat([*pieces, dec.flush()], dim=-1) - offline).abs().max() <= 1e-4


def test_two_streaming_decoders_on_one_codec_keep_their_own_state(tiny):
    """Two conversations streamed on one codec, a frame of each in turn: neither disturbs the other."""
    codes_a = tiny.encode(torch.randn(1, 6 * 1280) * 0.1)
    codes_b = tiny.encode(torch.randn(1, 6 * 1280, generator=torch.Generator().manual_seed(1)) * 0.3)
    assert not torch.equal(codes_a, codes_b)
    dec_a, dec_b = StreamingDecoder(tiny), StreamingDecoder(tiny)
    pieces_a, pieces_b = [], []
    for f in range(codes_a.shape[-1]):
        pieces_a.append(dec_a.push(codes_a[..., f:f + 1]))
        pieces_b.append(dec_b.push(codes_b[..., f:f + 1]))
    for pieces, dec, codes in ((pieces_a, dec_a, codes_a), (pieces_b, dec_b, codes_b)):
        streamed = torch.cat([*pieces, dec.flush()], dim=-1)
        assert (streamed - tiny.decode(codes)).abs().max() <= 1e-4
    assert all(m.state is None and not m.streaming for m in dec_a.convs)  # nothing left on the shared modules


def test_training_forward_gives_finite_losses_and_gradients(tiny):
    codec = Codec(PRESETS["tiny"]).train()
    audio = torch.randn(2, 2 * 1280) * 0.1
    out = codec(audio)
    rec = ReconstructionLoss()(out.audio, audio)
    loss = rec["mel"] + rec["stft"] + out.commit_loss + out.phone_logits.logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in codec.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert out.phone_logits.shape == (2, 2 * 8, 40)  # one phone distribution per 10 ms frame


def test_checkpoint_round_trip(tiny, tmp_path):
    path = checkpoint.save(tmp_path / "c", tiny.state_dict(), {"kind": "codec", "config": vars(tiny.cfg)})
    state, meta = checkpoint.load(path)
    other = Codec(PRESETS["tiny"])
    other.load_state_dict(state)
    codes = tiny.encode(torch.randn(1, 2560) * 0.1)
    assert torch.equal(other.eval().decode(codes), tiny.decode(codes))
    assert meta["kind"] == "codec" and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="missing"):
        checkpoint.load(tmp_path / "nothing")


def test_bad_input_says_what_is_expected(tiny):
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        tiny.encode(torch.randn(1280 * 2))
    with pytest.raises(ValueError, match="shorter than one codec frame"):
        tiny.encode(torch.randn(1, 100))
    with pytest.raises(ValueError, match=r"\(B, K, F\)"):
        tiny.decode(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="must divide"):
        _ = type(PRESETS["tiny"])(frame_rate=30.0).stride


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference codec checkpoint not built yet")
def test_reference_codec_streams_real_speech_exactly():
    from csm_lib import data
    from csm_lib.generate import load_codec
    from csm_lib.train_codec import mel_distance

    codec, meta = load_codec(REFERENCE)
    x, _ = data.synthesize("The weather was lovely, so we walked along the river.", "slt")
    x = data.audio.normalize_loudness(x)  # the codec was trained on corpus audio at -23 dBFS
    codes = codec.encode(x[None])
    offline = codec.decode(codes)
    dec = StreamingDecoder(codec)
    streamed = torch.cat([dec.push(codes[..., f:f + 1]) for f in range(codes.shape[-1])] + [dec.flush()], -1)
    assert (streamed - offline).abs().max() <= 1e-4
    # test-split mean is 0.65 (results/codec.json); white noise at a speech level scores about 6.5
    assert mel_distance(x[: offline.shape[-1]], offline[0]) < 0.8
    assert meta["provenance"]["commit"] and meta["steps"] > 0


def test_swap_keeps_a_s_first_codebooks_and_takes_b_s_others(tiny):
    a = tiny.encode(torch.randn(1, 5 * 1280) * 0.1)
    b = tiny.encode(torch.randn(1, 3 * 1280) * 0.1)
    hybrid = tiny.swap(a, b, keep=1)
    assert hybrid.shape == (1, 3 * 1280)  # the frames both have
    assert torch.allclose(hybrid, tiny.decode(torch.cat([a[:, :1, :3], b[:, 1:]], dim=1)))
    assert torch.allclose(tiny.swap(a, a, keep=1), tiny.decode(a))  # swapping with itself changes nothing
