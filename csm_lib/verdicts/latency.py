"""The seed's latency claims: its pipeline stages, its "180ms end-to-end", its latency table, the table's ordering
and its three gains over the pipeline, judged from ``results/latency_table.json`` (chapter 09's one run of four systems
at matched size). A gain is judged on the column the seed used, the full turn from the user's audio to the reply's first
audio; the speech out alone is reported beside it.
"""

from __future__ import annotations

from functools import partial

from .rules import (
    AGREE_POINTS,
    LAT,
    MEASURED,
    NAMES,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    SEED,
    Claim,
    Results,
    agree,
    gain_pct,
    pair,
    under,
)


def latency_claims(r: Results) -> list[Claim]:
    """The seed's latency table, its stages, its 180 ms, its ordering and its gains: chapter 09's one run."""
    lat = r[LAT]
    judged = partial(Claim, evidence=MEASURED, sources=(LAT,), chapter="09", measured_with=r.reference_step(LAT))
    out = {s: v["first_audio"] for s, v in lat["speech_out"].items()}  # the reply's text -> its first audio
    full = lat["full_turn"]["systems"]  # the user's audio -> the reply's first audio: the seed's end to end
    asr, lm = lat["full_turn"]["asr"]["median_ms"], lat["full_turn"]["lm_total"]["median_ms"]
    ms = {s: (out[s]["median_ms"], full[s]["median_ms"]) for s in NAMES}  # speech out, full turn
    seed = {row["system"]: row for row in lat["table"]}
    size = f"four systems of about {lat['parameters']['csm'] / 1e6:.1f} M parameters, {lat['torch_threads']} threads"
    order = sorted((s for s in seed if s in NAMES), key=lambda s: -seed[s]["seed_ms"])  # slowest first
    status = {(a, b): pair(full[a]["ci95_ms"], full[b]["ci95_ms"]) for a, b in zip(order, order[1:], strict=False)}
    said = "; ".join(f"{NAMES[a]} slower than {NAMES[b]}: {v} ({ms[a][1]:.1f} vs {ms[b][1]:.1f} ms)"
                     for (a, b), v in status.items())
    also = "; ".join(f"{NAMES[a]} slower than {NAMES[b]}: {pair(out[a]['ci95_ms'], out[b]['ci95_ms'])} "
                     f"({ms[a][0]:.1f} vs {ms[b][0]:.1f} ms)" for (a, b), v in status.items() if v != "confirmed")
    found = [judged(
        "stages", 'pipeline stages "each add 200-400ms, totaling 600-1200ms"', NOT_TESTABLE,
        f"because stage times depend on models and hardware the seed does not name. Here ({size}), medians: "
        f"recognising the user's turn {asr:.1f} ms, the LM's whole reply {lm:.1f} ms, TTS to its first audio "
        f"{ms['pipeline'][0]:.1f} ms; all three in a row (its full turn) {ms['pipeline'][1]:.1f} ms"), judged(
        "end_to_end", '"180ms end-to-end"; "sub-200ms latency is achievable on consumer hardware"',
        under(ms["csm"][1], SEED["sub_ms"]), f"judged on the full turn (the user's audio → pocketsphinx → a character "
        f"LM → the first audio sample): CSM takes {ms['csm'][1]:.1f} ms, {asr:.1f} of them recognising the user's "
        f"turn ({size}); rule: under {SEED['sub_ms']} ms. Its speech out alone (the reply's text given): "
        f"{ms['csm'][0]:.1f} ms"), judged(
        "latency", "latency: pipeline 850 ms, AudioLM 1200 ms, VALL-E 950 ms, CSM 180 ms", NOT_TESTABLE,
        f"because the seed names no model size, hardware or reply length. Measured at matched size ({size}, "
        f"{out['csm']['n']} held-out replies, one run), median ms, speech out / full turn: "
        + ", ".join(f"{NAMES[s]} {a:.1f} / {b:.1f}" for s, (a, b) in ms.items())), judged(
        "ordering", "ordering: AudioLM slower than VALL-E, VALL-E slower than the pipeline, the pipeline slower than "
        "CSM", REPRODUCED if set(status.values()) == {"confirmed"} else NOT_REPRODUCED,
        f"pair by pair on the full turn, 95% intervals: {said}" + (f". On speech out: {also}" if also else ""))]
    for system in ("csm", "audiolm", "valle"):
        ours = gain_pct(ms[system][1], ms["pipeline"][1])
        verdict, label = agree(ours, float(seed[system]["seed_improvement"].rstrip("%")))
        found.append(judged(
            f"gain_{system}", f'{NAMES[system].removesuffix("-style")} "{seed[system]["seed_improvement"]}" against '
            "the pipeline", verdict, f"{ours:+.1f}% on the full turn, the seed's end-to-end column ({ms[system][1]:.1f}"
            f" vs {ms['pipeline'][1]:.1f} ms, {asr:.1f} of them recognising the user's speech), computed the seed's "
            f"way, (pipeline − system) / pipeline; rule: within ±{AGREE_POINTS:g} points. Speech out alone, a column "
            f"the seed does not report: {gain_pct(ms[system][0], ms['pipeline'][0]):+.1f}%", qualifier=label))
    return found
