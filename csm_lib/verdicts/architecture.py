"""The seed's architecture claims: its ``CSMModel`` against Sesame's released CSM (``results/parity.json``), the RVQ's
semantic / acoustic split (the codebook swap chapter 03 printed, ``results/codec.json``), and its two modules,
cross-modal attention and the memory bank, trained inside CSM (``checkpoints/csm_*.json``,
``results/quality_table.json``, and their costs as chapter 06 printed them). Where no JSON holds those printed numbers
yet, the patterns below read them from the notebooks' stored outputs.
"""

from __future__ import annotations

from functools import partial

from .rules import (
    CHANCE,
    CODEC,
    CODEC_CK,
    DEFINED,
    MEASURED,
    NB03,
    NB06,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARITY,
    PARITY_TOL,
    QT,
    REF_3736,
    REPRODUCED,
    SCORES,
    SEED,
    VARIANTS,
    WORDS_KEPT_MAX_WER,
    Claim,
    Results,
    ci,
    helps,
)

# what chapters 03 and 06 printed (the codebook swap, the memory bank's and cross-attention's costs): no JSON yet
SWAP_SIM = r"sim_hybrid_to_([ab])\s+([\d.]+)"
SWAP_F0 = r"f0_closer_to_b_fraction\s+([\d.]+)\s*\npairs_with_pitch\s+([\d.]+)"
SWAP_WER = r"wer_hybrid_vs_recon_a_transcript\s+([\d.]+)"
BANK_FLOATS = r"memory bank at the reference width: [\d,]+ parameters, ([\d,]+) floats"
BANK_VS_KV = r"after (\d+) turns \(\d+ positions\): [\d,]+ floats of KV cache = (\d+)x"
CROSS_SAVED = r"(?m)^\s*\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+(0\.\d+)\s*\\?$"


def architecture_claims(r: Results) -> list[Claim]:
    """Sesame's architecture against the seed's sketch; the RVQ split; the seed's two modules trained in CSM: one
    helps when ``helps`` says so, the memory carries a conversation when its character consistency beats chance."""
    par, cfg, qt = r[PARITY], r[CODEC_CK]["config"], r[QT]
    worst = max(par["max_abs_diff"].values())
    same = worst < PARITY_TOL and par["greedy_codes_identical"]
    split = f"{cfg['n_semantic']} + {cfg['n_q'] - cfg['n_semantic']} split"
    sim = {who: float(v) for who, v in r.printed(NB03, SWAP_SIM)}
    share, pairs = (float(x) for x in r.printed(NB03, SWAP_F0)[0])
    wer = float(r.printed(NB03, SWAP_WER)[0])
    ck = {k: r[v] for k, v in VARIANTS.items()}
    sys = {k: qt["systems"][f"csm_{k}"]["summary"] for k in ck}
    mem, plain, loss = sys["memory"], sys["plain"], {k: c["valid"]["valid_c0_loss"] for k, c in ck.items()}
    trained = (f"trained inside CSM for {ck['plain']['steps'] - r[REF_3736]['steps']} steps from the reference at step "
               f"{r[REF_3736]['steps']:,}, beside a plain CSM given the same steps")
    keys = (*SCORES, "sim", "wer")
    differ, better = helps(sys["cross_modal"], plain, keys)
    saved = sorted(float(x) for x in r.printed(NB06, CROSS_SAVED))
    turns, ratio = r.printed(NB06, BANK_VS_KV)[0]
    judged = partial(Claim, evidence=DEFINED, chapter="06, 10", floor=f"chance {CHANCE:g}",
                     measured_with=r.reference_step(QT))
    return [Claim(
        "architecture", "CSM is a unified encoder with cross-modal attention, a dual memory bank and a streaming "
        "decoder (the seed's `CSMModel`)", NOT_REPRODUCED if same else NOT_TESTABLE,
        ("" if same else "because our model's parity with Sesame's released one failed. ") + "Sesame's released CSM "
        f"(transformers' `CsmForConditionalGeneration`) converts to ours and back with logits {worst:.1e} apart at "
        f"most and the same greedy codes for {par['greedy_frames_compared']} frames: one Llama backbone over "
        f"interleaved text and audio frames and a small audio decoder; no cross-modal attention, memory bank or "
        f"separate encoder", MEASURED, (PARITY,), "06"), Claim(
        "rvq", 'RVQ: semantic codebooks (1-8) carry "what" is said, acoustic ones (9-16) "how"',
        REPRODUCED if sim["b"] > sim["a"] and share > CHANCE and wer <= WORDS_KEPT_MAX_WER else NOT_REPRODUCED,
        f"for the reference codec's {split} (the seed's {SEED['codebooks']} was not built): giving utterance A the "
        f"acoustic codebooks of speaker B moves SIM to B ({sim['b']:.2f} vs {sim['a']:.2f} to A) and F0 toward B in "
        f"{round(share * pairs)} of {round(pairs)} pairs, while the words stay ({wer:.1%} WER against A's own "
        f"reconstruction); rule: closer to B in both, at most {WORDS_KEPT_MAX_WER:.0%} WER. Codebook 0 alone still "
        f"keeps much of the voice (SIM {r[CODEC]['1_codebooks']['sim']:.2f} to the original)", MEASURED,
        (NB03, CODEC_CK, CODEC), "03", qualifier=split), judged(
        "cross_modal", "asymmetric cross-modal attention: voice attends to text finely, text to pooled voice",
        REPRODUCED if better else NOT_REPRODUCED, f"{trained} (the equations are ours; the seed gives none): "
        + (f"intervals apart from the plain CSM's on {', '.join(differ)}" if differ else
           f"all {len(keys)} measures' intervals overlap the plain CSM's")
        + f" (character consistency {ci(sys['cross_modal'], 'character_consistency')} vs "
        f"{ci(plain, 'character_consistency')}); validation codebook-0 loss {loss['cross_modal']:.3f} vs "
        f"{loss['plain']:.3f}, one evaluation each. Pooling saves {saved[len(saved) // 2]:.0%} of the cross-attention's"
        f" query-key scores in chapter 06's conversation, but Sesame's CSM has no cross-attention to save on",
        sources=(VARIANTS["cross_modal"], VARIANTS["plain"], QT, NB06)), judged(
        "memory", 'dual memory banks (semantic, prosodic) "maintain conversation continuity"',
        REPRODUCED if mem["character_consistency_ci95"][0] > CHANCE else NOT_REPRODUCED,
        f"{trained}; by our choice the backbone's self-attention is cut at turn boundaries, so the bank is the only "
        f"route between turns. Character consistency {ci(mem, 'character_consistency')} against the plain CSM's "
        f"{ci(plain, 'character_consistency')}, SIM {mem['sim']:.2f} vs {plain['sim']:.2f}: at this budget it does "
        f"not carry the voice (validation codebook-0 loss {loss['memory']:.3f} vs {loss['plain']:.3f}). It carries a "
        f"constant {r.printed(NB06, BANK_FLOATS)[0]} floats between turns, {ratio}x less than the reference window's "
        f"KV cache after {turns} turns, for {ck['memory']['parameters']['seed_layer']:,} parameters",
        sources=(VARIANTS["memory"], VARIANTS["plain"], QT, NB06))]
