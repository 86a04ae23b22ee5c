"""The seed's quality claims: its five scores, its "0.89 naturalness score" and the pipeline's lost context, judged
under our definition of each score from ``results/quality_table.json`` and ``results/quality_validation.json`` (chapter
10), each with the chance level, floor or ceiling it is read against.
"""

from __future__ import annotations

from functools import partial

from .rules import (
    CHANCE,
    DEFINED,
    NAMES,
    NOT_MEASURED,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    QT,
    QV,
    REPRODUCED,
    SCORES,
    Claim,
    Results,
    above_chance,
    against_interval,
    ci,
)


def quality_claims(r: Results) -> list[Claim]:
    """The five scores under our definitions, naturalness, and the pipeline's lost context (at chance on both)."""
    qt, summaries = r[QT], r[QV]["summaries"]
    judged = partial(Claim, evidence=DEFINED, sources=(QT, QV), chapter="10", measured_with=r.reference_step(QT))
    sys = {k: v["summary"] for k, v in qt["systems"].items()}
    csm, pipe, natural, codec = sys["csm"], sys["pipeline"], summaries["ground_truth"], summaries["codec_resynthesis"]
    low = min((k for k in sys if k != "ground_truth"), key=lambda k: sys[k]["voice_consistency"])
    chance, voice, style = f"chance {CHANCE:g}", "character_consistency", "emotional_coherence"
    where = {k: (f"ceiling: the codec's resynthesis {codec[k]:.2f}", f"natural turns {natural[k]:.2f}, the codec's "
                 f"own resynthesis of them {codec[k]:.2f}") for k in ("prosodic_naturalness", "turn_taking_fluency")}
    where |= {  # key -> (its chance level, floor or ceiling; what the CSM's score is read against)
        voice: (chance, f"{above_chance(csm[f'{voice}_ci95'])}; without context {ci(sys['csm_no_context'], voice)}"),
        style: (chance, f"{above_chance(csm[f'{style}_ci95'])}; natural turns {ci(natural, style)}"),
        "voice_consistency": (f"floor: every system {sys[low]['voice_consistency']:.2f} or more", f"natural turns "
                              f"{natural['voice_consistency']:.2f}; every system {sys[low]['voice_consistency']:.2f} "
                              f"({NAMES.get(low, low)}) or more: the check does not separate the systems")}
    lost = {above_chance(pipe[f"{voice}_ci95"]), above_chance(pipe[f"{style}_ci95"])} == {"at chance"}
    found = [judged(
        "context", 'a pipeline loses context: "prosody, emotion, and speaking style are discarded"',
        REPRODUCED if lost else NOT_REPRODUCED, f"our pipeline speaks with the CSM without context, so it discards the "
        f"context by construction: character consistency {ci(pipe, voice)}, emotional coherence {ci(pipe, style)}. "
        f"CSM with context: {ci(csm, voice)} (voice, {above_chance(csm[f'{voice}_ci95'])}) and {ci(csm, style)} "
        f"(speaking style, {above_chance(csm[f'{style}_ci95'])})", floor=chance, qualifier="by construction"), judged(
        "naturalness", '"0.89 naturalness score"', NOT_TESTABLE, f"because the seed does not say what it measures (a "
        f"listening test? a predictor?). The nearest check here, prosodic naturalness: CSM with context "
        f"{ci(csm, 'prosodic_naturalness')}, natural turns {ci(natural, 'prosodic_naturalness')}",
        evidence=NOT_MEASURED)]
    for key in SCORES:
        verdict, label = against_interval(qt["seed_scores"][key], csm[f"{key}_ci95"])
        found.append(judged(
            key, f"{key.replace('_', ' ').title().replace('Turn Taking', 'Turn-taking')} {qt['seed_scores'][key]}",
            verdict, f"{qt['definitions'][key]}: CSM with context {ci(csm, key)} on {qt['n_turns']} held-out turns "
            f"x {len(qt['seeds'])} sampling seeds; {where[key][1]}", floor=where[key][0], qualifier=label))
    return found
