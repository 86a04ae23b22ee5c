"""csm_lib's CSM against transformers' CsmForConditionalGeneration, an independent implementation.

Small random transformers models (the dimensions of a csm_lib config, plain RoPE and Llama-3 RoPE
scaling) are converted into csm_lib, and a random csm_lib model to transformers and back: both sides
must give the same codebook-0 logits, the same audio-decoder logits and the same greedy codes. The
transformers side is driven only through its own modules and its own ``generate``. The measuring is
``csm_lib.convert.parity_report``, which also writes ``results/parity.json`` (the README's numbers);
this file asserts its bounds.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from csm_lib.backbone import rope_frequencies  # noqa: E402
from csm_lib.convert import (  # noqa: E402
    PARITY_FRAMES,
    PARITY_ROPE,
    csm_to_hf_state,
    from_hf,
    from_hf_config,
    hf_to_csm_state,
    parity_report,
    random_hf,
    same_weights,
    small_config,
    to_hf_config,
)
from csm_lib.model import PRESETS  # noqa: E402

TOL = 1e-4  # max |Δ logits|: float32 rounding is ~1e-7 here; a wrong weight or RoPE is ~1e-1


@pytest.fixture(scope="module")
def report():
    return parity_report(seed=0)


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


@pytest.mark.parametrize("scaling", PARITY_ROPE.values(), ids=PARITY_ROPE.keys())
def test_state_dict_round_trip_is_exact(scaling):
    hf = random_hf(small_config(scaling))
    back = csm_to_hf_state(hf_to_csm_state(hf.state_dict()))
    ref = {k: v for k, v in hf.state_dict().items() if not k.startswith("codec_model.")}
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)


@pytest.mark.parametrize("variant", PARITY_ROPE)
def test_backbone_logits_match(report, variant):
    assert report["variants"][variant]["codebook0_max_abs_diff"] <= TOL


@pytest.mark.parametrize("variant", PARITY_ROPE)
def test_decoder_logits_match(report, variant):
    assert report["variants"][variant]["decoder_max_abs_diff"] <= TOL


@pytest.mark.parametrize("variant", PARITY_ROPE)
def test_greedy_codes_match_transformers_generate(report, variant):
    """transformers' own generate (greedy backbone and depth decoder) vs csm_lib's cached generate_frame."""
    v = report["variants"][variant]
    assert v["greedy_frames_requested"] == PARITY_FRAMES and v["greedy_frames_transformers"] >= 20
    assert v["greedy_codes_identical"]


def test_csm_lib_to_transformers_and_back(report):
    r = report["csm_lib_to_transformers_and_back"]
    assert r["codebook0_max_abs_diff"] <= TOL
    assert r["weights_identical"]


def test_report_summary(report):
    assert report["max_abs_diff"]["codebook0"] <= TOL and report["max_abs_diff"]["decoder"] <= TOL
    assert report["greedy_codes_identical"] and report["greedy_frames_compared"] >= 20


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


def test_parity_cli_writes_json(tmp_path, monkeypatch):
    """``python -m csm_lib.convert parity --out=...``: the report plus provenance; the converter's usage stays."""
    import json

    from csm_lib import convert

    monkeypatch.setattr(convert, "parity_report", lambda seed=0: {"seed": seed, "max_abs_diff": {
        "codebook0": 0.0, "decoder": 0.0}, "greedy_codes_identical": True, "greedy_frames_compared": PARITY_FRAMES})
    out = tmp_path / "parity.json"
    convert.main(["parity", f"--out={out}", "--seed=3"])
    written = json.loads(out.read_text())
    assert written["seed"] == 3
    assert written["provenance"]["command"] == f"python -m csm_lib.convert parity --out={out} --seed=3"
    assert {"commit", "device", "torch", "transformers"} <= written["provenance"].keys()
    with pytest.raises(SystemExit, match="usage"):
        convert.main(["only-one-argument"])
