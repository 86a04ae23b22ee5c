"""csm_lib's CSM against transformers' CsmForConditionalGeneration, an independent implementation.

A small random transformers model (the dimensions of a csm_lib config) is converted into csm_lib
and back; both must give the same codebook-0 logits, the same audio-decoder logits and the same
greedy codes. The transformers side is driven only through its own modules and its own
``generate``.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from csm_lib.backbone import TransformerConfig, rope_frequencies  # noqa: E402
from csm_lib.convert import (  # noqa: E402
    csm_to_hf_state,
    from_hf,
    from_hf_config,
    hf_to_csm_state,
    to_hf,
    to_hf_config,
)
from csm_lib.model import CSM, PRESETS, CSMConfig  # noqa: E402

TOL = 1e-4


def small_config(rope_scaling=None) -> CSMConfig:
    def t(dim, layers, heads, kv, hidden, max_len):
        return TransformerConfig(dim, layers, heads, kv, hidden, max_seq_len=max_len, rope_scaling=rope_scaling)
    return CSMConfig(backbone=t(64, 2, 4, 2, 128, 256), decoder=t(32, 2, 2, 1, 64, 8),
                     n_codebooks=6, audio_vocab_size=48, text_vocab_size=40)


def random_hf(cfg: CSMConfig, seed: int = 0):
    torch.manual_seed(seed)
    hf = transformers.CsmForConditionalGeneration(to_hf_config(cfg)).eval()
    with torch.no_grad():  # transformers' init leaves norms at 1; randomise them so they are tested too
        for name, p in hf.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return hf


def prompt(cfg: CSMConfig, n_text: int = 7, n_audio: int = 9, seed: int = 1):
    """A text turn then audio frames: csm_lib frames/mask (1, S, K+1) and the same positions for transformers."""
    g = torch.Generator().manual_seed(seed)
    K = cfg.n_codebooks
    text = torch.randint(0, cfg.text_vocab_size, (1, n_text), generator=g)
    codes = torch.randint(0, cfg.audio_vocab_size, (1, n_audio, K), generator=g)
    frames = torch.zeros(1, n_text + n_audio, K + 1, dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    frames[0, :n_text, K], mask[0, :n_text, K] = text[0], True
    frames[0, n_text:, :K], mask[0, n_text:, :K] = codes[0], True
    return frames, mask, text, codes


def same_weights(a: CSM, b: CSM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def hf_inputs_embeds(hf, text, codes):
    """Positions embedded by transformers' own modules: text tokens, then audio frames (summed codebooks)."""
    return torch.cat([hf.embed_text_tokens(text), hf.backbone_model.embed_tokens(codes)], dim=1)


@pytest.fixture(scope="module", params=[None, (32.0, 1.0, 4.0, 64)], ids=["rope", "llama3_rope"])
def pair(request):
    cfg = small_config(request.param)
    hf = random_hf(cfg)
    return hf, from_hf(hf)


def test_config_round_trip():
    for cfg in (small_config(), small_config((32.0, 1.0, 4.0, 8192)), PRESETS["csm_1b"]):
        assert from_hf_config(to_hf_config(cfg, codec_config=transformers.MimiConfig(num_hidden_layers=1))) == cfg


def test_csm_1b_config_matches_transformers_defaults():
    """transformers' CsmConfig() defaults are Sesame's csm-1b: our preset must convert to the same dimensions."""
    ref, ours = transformers.CsmConfig(), to_hf_config(PRESETS["csm_1b"])
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "num_codebooks", "vocab_size", "text_vocab_size"):
        assert getattr(ours, key) == getattr(ref, key), key
        if key not in ("text_vocab_size",):
            assert getattr(ours.depth_decoder_config, key) == getattr(ref.depth_decoder_config, key), key


def test_llama3_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = to_hf_config(PRESETS["csm_1b"])
    inv_freq, scale = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")  # float32
    b = PRESETS["csm_1b"].backbone
    ours = rope_frequencies(b.head_dim, b.rope_theta, b.rope_scaling)  # float64
    assert scale == 1.0
    assert torch.allclose(ours, inv_freq.double(), rtol=1e-6, atol=0)
    plain = rope_frequencies(b.head_dim, b.rope_theta)
    assert (ours <= plain).all() and (ours[-1] / plain[-1]).item() == pytest.approx(1 / 32)  # slowest / 32
    assert ours[0] == plain[0]  # fastest unchanged


def test_state_dict_round_trip_is_exact(pair):
    hf, ours = pair
    back = csm_to_hf_state(hf_to_csm_state(hf.state_dict()))
    ref = {k: v for k, v in hf.state_dict().items() if not k.startswith("codec_model.")}
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)


@torch.no_grad()
def test_backbone_logits_match(pair):
    hf, ours = pair
    frames, mask, text, codes = prompt(ours.cfg)
    ref = hf(inputs_embeds=hf_inputs_embeds(hf, text, codes)).logits  # (1, S, V)
    got = ours.codebook0_head(ours.backbone(ours.embed_frames(frames, mask)))
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= TOL


@torch.no_grad()
def test_decoder_logits_match(pair):
    hf, ours = pair
    cfg = ours.cfg
    g = torch.Generator().manual_seed(2)
    h = torch.randn(5, cfg.backbone.dim, generator=g)
    codes = torch.randint(0, cfg.audio_vocab_size, (5, cfg.n_codebooks), generator=g)
    ids = torch.nn.functional.pad(codes[:, :-1], (1, 0))  # position 0 is replaced by h
    ref = hf.depth_decoder(input_ids=ids, backbone_last_hidden_state=h).logits  # (5, K-1, V)
    got = ours.decoder_logits(h, codes)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= TOL


@torch.no_grad()
def test_greedy_codes_match_transformers_generate(pair):
    """transformers' own generate (greedy backbone and depth decoder) vs csm_lib's cached generate_frame."""
    hf, ours = pair
    n_frames = 24
    frames, mask, text, codes = prompt(ours.cfg, n_audio=0)
    ref = hf.generate(input_ids=text, attention_mask=torch.ones_like(text), max_new_tokens=n_frames,
                      min_new_tokens=n_frames, do_sample=False, depth_decoder_do_sample=False)  # (1, F, K)
    ref = ref if isinstance(ref, torch.Tensor) else ref.sequences
    from csm_lib.backbone import KVCache

    cache = KVCache(ours.cfg.backbone, 1)
    got, new_f, new_m = [], frames, mask
    for _ in range(n_frames):
        c = ours.generate_frame(new_f, new_m, cache=cache, temperature=0)  # (1, K)
        got.append(c)
        new_f = torch.zeros(1, 1, ours.cfg.n_codebooks + 1, dtype=torch.long)
        new_f[0, 0, :-1] = c[0]
        new_m = torch.zeros_like(new_f, dtype=torch.bool)
        new_m[0, 0, :-1] = True
    got = torch.stack(got, dim=1)  # (1, F, K)
    assert ref.shape[-1] == ours.cfg.n_codebooks and ref.shape[1] >= 20
    assert torch.equal(got[:, : ref.shape[1]], ref)


@torch.no_grad()
def test_csm_lib_to_transformers_and_back():
    torch.manual_seed(3)
    ours = CSM(small_config()).eval()
    hf = to_hf(ours)
    back = from_hf(hf)
    frames, mask, text, codes = prompt(ours.cfg)
    ref = hf(inputs_embeds=hf_inputs_embeds(hf, text, codes)).logits
    got = ours.codebook0_head(ours.backbone(ours.embed_frames(frames, mask)))
    assert (got - ref).abs().max().item() <= TOL
    assert same_weights(ours, back)


def test_untied_audio_embeddings_are_refused():
    hf = random_hf(small_config())
    state = copy.copy(hf.state_dict())
    state["depth_decoder.model.embed_tokens.weight"] = state["depth_decoder.model.embed_tokens.weight"] + 1
    with pytest.raises(ValueError, match="shares one table"):
        hf_to_csm_state(state)


def test_load_hf_checkpoint_folder(tmp_path):
    from csm_lib.convert import load_hf_checkpoint

    hf = random_hf(small_config())
    hf.save_pretrained(tmp_path)
    ours = load_hf_checkpoint(tmp_path)
    ref = from_hf(hf)
    assert same_weights(ours, ref)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path / "missing")
