"""Weights to and from transformers' ``CsmForConditionalGeneration``: parity and the real csm-1b.

transformers ships an independent implementation of CSM. Converting weights both ways and
getting the same logits and the same greedy codes (:func:`parity_report`, asserted by
``tests/test_parity.py``, written to ``results/parity.json`` by
``python -m csm_lib.convert parity --out=results/parity.json``) is our proof that ``csm_lib.model``
*is* CSM, and it lets you load Sesame's published csm-1b.

The two layouts, name by name (``{i}`` a layer; both use the half-split RoPE layout, so no
weight is permuted)::

    csm_lib (model.py)                     transformers (modeling_csm.py)
    text_embeddings.weight                 embed_text_tokens.weight
    audio_embeddings.weight                backbone_model.embed_tokens.embed_audio_tokens.weight
                                           depth_decoder.model.embed_tokens.weight   (tied: same table)
    backbone.layers.{i}.<block>            backbone_model.layers.{i}.<block>
    backbone.norm.weight                   backbone_model.norm.weight
    codebook0_head.weight                  lm_head.weight
    projection.weight                      depth_decoder.model.inputs_embeds_projector.weight
    decoder.layers.{i}.<block>             depth_decoder.model.layers.{i}.<block>
    decoder.norm.weight                    depth_decoder.model.norm.weight
    audio_head  (K-1, Dd, V)               depth_decoder.codebooks_head.weight  (K-1, Dd, V)
    —                                      codec_model.*  (Mimi; not converted, csm_lib has its own codec)

``<block>`` is ``self_attn.{q,k,v,o}_proj.weight``, ``mlp.{gate,up,down}_proj.weight``,
``input_layernorm.weight`` and ``post_attention_layernorm.weight`` in both.

**Loading the real csm-1b** (about 6 GB in fp32; transformers' format as published on the
Hugging Face hub under ``sesame/csm-1b``). Nothing here downloads: fetch the folder yourself
(``huggingface-cli download sesame/csm-1b --local-dir csm-1b``), then::

    python -m csm_lib.convert csm-1b checkpoints/csm_1b.safetensors

or in Python ``model = load_hf_checkpoint("csm-1b")``. The result speaks Mimi codes (32
codebooks of 2,051 at 24 kHz) and Llama-3 text tokens, not our codec's and tokenizer's: pair it
with Mimi and the Llama-3 tokenizer, which this workbook does not ship.

Used in chapter 06 (``notebooks/06_context_and_memory.ipynb``: csm-1b's size) and chapter 08 (against
transformers' own ``generate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from csm_lib.backbone import TransformerConfig
from csm_lib.model import CSM, CSMConfig

# csm_lib prefix -> transformers prefix (the transformer blocks keep their names)
PREFIXES = [
    ("text_embeddings.weight", "embed_text_tokens.weight"),
    ("audio_embeddings.weight", "backbone_model.embed_tokens.embed_audio_tokens.weight"),
    ("backbone.", "backbone_model."),
    ("codebook0_head.weight", "lm_head.weight"),
    ("projection.weight", "depth_decoder.model.inputs_embeds_projector.weight"),
    ("decoder.", "depth_decoder.model."),
    ("audio_head", "depth_decoder.codebooks_head.weight"),
]
TIED_DECODER_EMBEDDINGS = "depth_decoder.model.embed_tokens.weight"
CODEC_PREFIX = "codec_model."


def _rename(name: str, pairs: list[tuple[str, str]]) -> str:
    for src, dst in pairs:
        if name.startswith(src):
            return dst + name[len(src):]
    raise KeyError(f"no conversion rule for weight {name!r}")


def csm_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """csm_lib state dict -> transformers names (the audio table written twice, as transformers ties it)."""
    out = {_rename(k, PREFIXES): v for k, v in state.items()}
    out[TIED_DECODER_EMBEDDINGS] = state["audio_embeddings.weight"]
    return out


def hf_to_csm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers state dict -> csm_lib names. Drops the codec; refuses untied audio embeddings."""
    state = dict(state)
    backbone_key = PREFIXES[1][1]
    if backbone_key not in state and TIED_DECODER_EMBEDDINGS in state:  # saved files keep one copy of a tied table
        state[backbone_key] = state[TIED_DECODER_EMBEDDINGS]
    backbone_table, decoder_table = state[backbone_key], state.get(TIED_DECODER_EMBEDDINGS)
    if decoder_table is not None and not torch.equal(decoder_table, backbone_table):
        raise ValueError("the depth decoder's audio embeddings differ from the backbone's; csm_lib (like "
                         "Sesame's CSM) shares one table. Convert a model with tie_codebooks_embeddings=True")
    reverse = [(dst, src) for src, dst in PREFIXES]
    return {_rename(k, reverse): v for k, v in state.items()
            if not k.startswith(CODEC_PREFIX) and k != TIED_DECODER_EMBEDDINGS}


# --- configs ----------------------------------------------------------------------------------
def _rope_parameters(t: TransformerConfig) -> dict:
    if t.rope_scaling is None:
        return {"rope_type": "default", "rope_theta": t.rope_theta}
    factor, low, high, original = t.rope_scaling
    return {"rope_type": "llama3", "rope_theta": t.rope_theta, "factor": factor, "low_freq_factor": low,
            "high_freq_factor": high, "original_max_position_embeddings": original}


def _transformer_fields(t: TransformerConfig) -> dict:
    return {"hidden_size": t.dim, "num_hidden_layers": t.n_layers, "num_attention_heads": t.n_heads,
            "num_key_value_heads": t.n_kv_heads, "intermediate_size": t.hidden_dim, "head_dim": t.head_dim,
            "max_position_embeddings": t.max_seq_len, "rms_norm_eps": t.norm_eps,
            "rope_parameters": _rope_parameters(t)}


def to_hf_config(cfg: CSMConfig, codec_config=None):
    """A transformers ``CsmConfig`` with ``cfg``'s dimensions.

    ``codec_config``: the Mimi config transformers builds beside the model (it is not converted).
    Default: Mimi's own for Sesame's vocabulary (2,051), else a 1-layer Mimi, cheap to build.
    """
    from transformers import CsmConfig, MimiConfig

    K, V = cfg.n_codebooks, cfg.audio_vocab_size
    if codec_config is None:
        codec_config = MimiConfig() if V == 2051 else MimiConfig(num_hidden_layers=1, num_quantizers=K)
    decoder = {**_transformer_fields(cfg.decoder), "num_codebooks": K, "vocab_size": V,
               "backbone_hidden_size": cfg.backbone.dim}
    # special text ids: Sesame's Llama-3 ids for csm-1b; for our small BPE the processor-only ids
    # (audio placeholder tokens) are unused by csm_lib and only need to lie inside the vocabulary
    special = ({} if cfg.text_vocab_size == 128_256 else
               {"pad_token_id": 0, "bos_token_id": 1, "audio_token_id": cfg.text_vocab_size - 2,
                "audio_eos_token_id": cfg.text_vocab_size - 1, "codebook_pad_token_id": V - 1})
    return CsmConfig(**_transformer_fields(cfg.backbone), num_codebooks=K, vocab_size=V,
                     text_vocab_size=cfg.text_vocab_size, depth_decoder_config=decoder,
                     codec_config=codec_config.to_dict(), tie_codebooks_embeddings=True, **special)


def _transformer_config(c) -> TransformerConfig:
    rope = dict(c.rope_parameters or {"rope_type": "default", "rope_theta": 10_000.0})
    if rope["rope_type"] == "llama3":
        scaling = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                   int(rope["original_max_position_embeddings"]))
    elif rope["rope_type"] == "default":
        scaling = None
    else:
        raise ValueError(f"RoPE type {rope['rope_type']!r} is not supported; csm_lib implements 'default' and 'llama3'")
    if c.head_dim != c.hidden_size // c.num_attention_heads:
        raise ValueError(f"head_dim {c.head_dim} != hidden_size / num_attention_heads; csm_lib derives it")
    return TransformerConfig(dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                             n_kv_heads=c.num_key_value_heads, hidden_dim=c.intermediate_size,
                             max_seq_len=c.max_position_embeddings, rope_theta=float(rope["rope_theta"]),
                             norm_eps=c.rms_norm_eps, rope_scaling=scaling)


def from_hf_config(hf) -> CSMConfig:
    """A csm_lib ``CSMConfig`` from a transformers ``CsmConfig``."""
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf, flag, False) or getattr(hf.depth_decoder_config, flag, False):
            raise ValueError(f"{flag}=True is not supported: csm_lib's Llama blocks have no biases")
    return CSMConfig(backbone=_transformer_config(hf), decoder=_transformer_config(hf.depth_decoder_config),
                     n_codebooks=hf.num_codebooks, audio_vocab_size=hf.vocab_size,
                     text_vocab_size=hf.text_vocab_size)


# --- models -----------------------------------------------------------------------------------
def from_hf(hf_model) -> CSM:
    """A csm_lib ``CSM`` with the weights of a transformers ``CsmForConditionalGeneration``."""
    model = CSM(from_hf_config(hf_model.config))
    model.load_state_dict(hf_to_csm_state(hf_model.state_dict()), strict=True)
    return model.to(next(hf_model.parameters()).dtype)


def to_hf(model: CSM, codec_config=None):
    """A transformers ``CsmForConditionalGeneration`` with ``model``'s weights (its codec left random)."""
    from transformers import CsmForConditionalGeneration

    hf = CsmForConditionalGeneration(to_hf_config(model.cfg, codec_config))
    missing, unexpected = hf.load_state_dict(csm_to_hf_state(model.state_dict()), strict=False)
    missing = [k for k in missing if not k.startswith(CODEC_PREFIX)]
    if missing or unexpected:
        raise RuntimeError(f"conversion left weights unmatched: missing {missing}, unexpected {unexpected}")
    return hf.to(next(model.parameters()).dtype)


def read_safetensors_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` or of the shards named in ``model.safetensors.index.json``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder} holds neither model.safetensors nor model.safetensors.index.json; "
                                "expected a transformers-format CSM checkpoint folder")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def load_hf_checkpoint(folder: str | Path) -> CSM:
    """A csm_lib ``CSM`` from a local transformers-format checkpoint folder (config.json + safetensors)."""
    from transformers import CsmConfig

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {folder}; expected a transformers-format CSM checkpoint folder")
    cfg = from_hf_config(CsmConfig.from_pretrained(folder, local_files_only=True))
    state = hf_to_csm_state(read_safetensors_folder(folder))
    model = CSM(cfg).to(next(iter(state.values())).dtype)
    model.load_state_dict(state, strict=True)
    return model


# --- parity with transformers ------------------------------------------------------------------
# Small random models: the dimensions of a csm_lib config, cheap on a CPU. PARITY_ROPE: plain RoPE
# and Llama-3 scaling (factor, low, high, original length) short enough to act within 256 positions.
PARITY_ROPE = {"rope": None, "llama3_rope": (32.0, 1.0, 4.0, 64)}
PARITY_FRAMES = 24  # greedy frames compared against transformers' own generate


def small_config(rope_scaling=None) -> CSMConfig:
    """The parity tests' CSM: 2 + 2 layers, 6 codebooks of 48, 40 text tokens."""
    def t(dim, layers, heads, kv, hidden, max_len):
        return TransformerConfig(dim, layers, heads, kv, hidden, max_seq_len=max_len, rope_scaling=rope_scaling)
    return CSMConfig(backbone=t(64, 2, 4, 2, 128, 256), decoder=t(32, 2, 2, 1, 64, 8),
                     n_codebooks=6, audio_vocab_size=48, text_vocab_size=40)


def random_hf(cfg: CSMConfig, seed: int = 0):
    """A random transformers ``CsmForConditionalGeneration`` of ``cfg``'s dimensions, in eval mode."""
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    hf = CsmForConditionalGeneration(to_hf_config(cfg)).eval()
    with torch.no_grad():  # transformers' init leaves norms at 1; randomise them so they are tested too
        for name, p in hf.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return hf


def parity_prompt(cfg: CSMConfig, n_text: int = 7, n_audio: int = 9, seed: int = 1):
    """A text turn then audio frames: csm_lib frames/mask (1, S, K+1), and text (1, T) / codes (1, F, K)."""
    g = torch.Generator().manual_seed(seed)
    K = cfg.n_codebooks
    text = torch.randint(0, cfg.text_vocab_size, (1, n_text), generator=g)
    codes = torch.randint(0, cfg.audio_vocab_size, (1, n_audio, K), generator=g)
    frames = torch.zeros(1, n_text + n_audio, K + 1, dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    frames[0, :n_text, K], mask[0, :n_text, K] = text[0], True
    frames[0, n_text:, :K], mask[0, n_text:, :K] = codes[0], True
    return frames, mask, text, codes


def hf_inputs_embeds(hf, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Positions embedded by transformers' own modules: text tokens, then audio frames (summed codebooks)."""
    return torch.cat([hf.embed_text_tokens(text), hf.backbone_model.embed_tokens(codes)], dim=1)


@torch.no_grad()
def codebook0_max_diff(hf, ours: CSM, seed: int = 1) -> float:
    """max |codebook-0 logits of transformers - csm_lib| over a text + audio prompt."""
    frames, mask, text, codes = parity_prompt(ours.cfg, seed=seed)
    ref = hf(inputs_embeds=hf_inputs_embeds(hf, text, codes)).logits  # (1, S, V)
    got = ours.codebook0_head(ours.backbone(ours.embed_frames(frames, mask)))
    if got.shape != ref.shape:
        raise AssertionError(f"codebook-0 logits: csm_lib {tuple(got.shape)} vs transformers {tuple(ref.shape)}")
    return (got - ref).abs().max().item()


@torch.no_grad()
def decoder_max_diff(hf, ours: CSM, seed: int = 2, n: int = 5) -> float:
    """max |audio-decoder logits of transformers - csm_lib| for ``n`` random backbone states and frames."""
    cfg = ours.cfg
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, cfg.backbone.dim, generator=g)
    codes = torch.randint(0, cfg.audio_vocab_size, (n, cfg.n_codebooks), generator=g)
    ids = torch.nn.functional.pad(codes[:, :-1], (1, 0))  # position 0 is replaced by h
    ref = hf.depth_decoder(input_ids=ids, backbone_last_hidden_state=h).logits  # (n, K-1, V)
    got = ours.decoder_logits(h, codes)
    if got.shape != ref.shape:
        raise AssertionError(f"decoder logits: csm_lib {tuple(got.shape)} vs transformers {tuple(ref.shape)}")
    return (got - ref).abs().max().item()


@torch.no_grad()
def greedy_codes(hf, ours: CSM, n_frames: int = PARITY_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy codes (1, F, K) after a text prompt: transformers' own ``generate`` and csm_lib's cached
    ``generate_frame`` (``inference.plain_frames``). transformers may stop early on its end-of-audio frame;
    csm_lib runs ``n_frames``."""
    from csm_lib.inference import plain_frames

    frames, mask, text, _ = parity_prompt(ours.cfg, n_audio=0)
    ref = hf.generate(input_ids=text, attention_mask=torch.ones_like(text), max_new_tokens=n_frames,
                      min_new_tokens=n_frames, do_sample=False, depth_decoder_do_sample=False)
    ref = ref if isinstance(ref, torch.Tensor) else ref.sequences
    got = plain_frames(ours, frames, mask, n_frames, temperature=0, stop=False)  # each (1, K)
    return ref, torch.stack(got, dim=1)


def same_weights(a: CSM, b: CSM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def parity_report(seed: int = 0) -> dict:
    """csm_lib against transformers' ``CsmForConditionalGeneration``, measured on small random models.

    For plain RoPE and Llama-3 scaling: a random transformers model converted into csm_lib, max |Δ|
    of codebook-0 and audio-decoder logits, and greedy codes against transformers' ``generate``;
    then a random csm_lib model converted to transformers and back (logits and exact weights).
    The maxima are float32 rounding noise: they differ by CPU and library build.
    """
    variants = {}
    for name, scaling in PARITY_ROPE.items():
        cfg = small_config(scaling)
        hf = random_hf(cfg, seed)
        ours = from_hf(hf)
        ref, got = greedy_codes(hf, ours)
        variants[name] = {
            "rope_scaling": scaling,
            "codebook0_max_abs_diff": codebook0_max_diff(hf, ours),
            "decoder_max_abs_diff": decoder_max_diff(hf, ours),
            "greedy_frames_requested": PARITY_FRAMES,
            "greedy_frames_transformers": int(ref.shape[1]),
            "greedy_codes_identical": bool(ref.shape[-1] == cfg.n_codebooks
                                           and torch.equal(got[:, : ref.shape[1]], ref)),
        }
    torch.manual_seed(seed + 3)
    ours = CSM(small_config()).eval()
    hf = to_hf(ours)
    back = from_hf(hf)
    round_trip = {"codebook0_max_abs_diff": codebook0_max_diff(hf, ours), "weights_identical": same_weights(ours, back)}
    return {
        "what": "random small CsmForConditionalGeneration converted to csm_lib (and a random csm_lib CSM to "
                "transformers and back): max |csm_lib - transformers| of logits, float32 on the CPU; greedy codes "
                "against transformers' own generate",
        "seed": seed,
        "config": asdict(small_config()),
        "variants": variants,
        "csm_lib_to_transformers_and_back": round_trip,
        "max_abs_diff": {
            "codebook0": max([v["codebook0_max_abs_diff"] for v in variants.values()]
                             + [round_trip["codebook0_max_abs_diff"]]),
            "decoder": max(v["decoder_max_abs_diff"] for v in variants.values()),
        },
        "greedy_frames_compared": min(v["greedy_frames_transformers"] for v in variants.values()),
        "greedy_codes_identical": all(v["greedy_codes_identical"] for v in variants.values()),
    }


def _parity_main(argv: list[str]) -> None:
    import transformers

    from csm_lib import checkpoint
    from csm_lib.outputs import results_dir

    ap = argparse.ArgumentParser(prog="python -m csm_lib.convert parity",
                                 description="csm_lib vs transformers on small random models -> JSON")
    ap.add_argument("--out", default=None, help="default: results/parity.json (csm_lib.outputs.results_dir())")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    report = parity_report(args.seed)
    report["provenance"] = {"command": " ".join(["python -m csm_lib.convert parity", *argv]),
                            "commit": checkpoint.git_commit(), "device": checkpoint.device_name("cpu"),
                            "torch": torch.__version__, "transformers": transformers.__version__,
                            "python": sys.version.split()[0]}
    out = Path(args.out) if args.out else results_dir() / "parity.json"
    checkpoint.atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    m = report["max_abs_diff"]
    print(f"wrote {out}: max |Δ logits| codebook 0 {m['codebook0']:.2e}, audio decoder {m['decoder']:.2e}; "
          f"greedy codes identical: {report['greedy_codes_identical']} ({report['greedy_frames_compared']} frames)")


def main(argv: list[str] | None = None) -> None:
    """``python -m csm_lib.convert HF_FOLDER OUT.safetensors``: a transformers checkpoint to csm_lib's format.

    ``python -m csm_lib.convert parity [--out=results/parity.json] [--seed=0]``: :func:`parity_report` as JSON.
    """
    from csm_lib import checkpoint

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["parity"]:
        return _parity_main(argv[1:])
    if len(argv) != 2:
        raise SystemExit("usage: python -m csm_lib.convert HF_CHECKPOINT_FOLDER OUT.safetensors\n"
                         "       python -m csm_lib.convert parity [--out=results/parity.json] [--seed=0]")
    model = load_hf_checkpoint(argv[0])
    meta = {"config": asdict(model.cfg), "converted_from": str(Path(argv[0]).resolve()),
            "parameters": model.num_parameters(), "provenance": checkpoint.provenance("csm_lib.convert", "cpu")}
    path = checkpoint.save(argv[1], model.state_dict(), meta)
    print(f"wrote {path} ({model.num_parameters()['total']:,} parameters)")


if __name__ == "__main__":
    main()
