"""The seed's serving claim, a FastAPI ``/generate`` with "sub-200ms responses", judged from ``results/serving.json``
(chapter 11): on the whole reply, as the seed's sketch returns it in one JSON body, with the first streamed byte beside.
"""

from __future__ import annotations

from .rules import MEASURED, SEED, SRV, Claim, Results, under


def serving_claims(r: Results) -> list[Claim]:
    """The seed's FastAPI sketch returns one JSON body: judged on the whole reply, beside the first byte."""
    srv = r[SRV]
    one, top = srv["levels"]["1"], max(srv["levels"], key=int)
    whole = {k: v["rtf_wall_median"] * v["audio_s_median"] * 1e3 for k, v in srv["levels"].items()}
    return [Claim(
        "serving", 'a FastAPI `/generate` with "sub-200ms responses"', under(whole["1"], SEED["sub_ms"]),
        f"the seed's sketch returns the whole reply in one JSON body. For this benchmark's held-out sentences (median "
        f"{one['audio_s_median']:.2f} s of audio) a whole reply ends about {whole['1']:.0f} ms after the request with "
        f"one client and {whole[top]:.0f} ms with {top} (the median real-time factor counted from the request times "
        f"the median length: two medians, not a measured percentile); rule: one client under {SEED['sub_ms']} ms. "
        f"Streamed, the first audio byte comes in {one['ttfb_p50_ms']:.1f} ms (p50, one client) and "
        f"{srv['levels'][top]['ttfb_p95_ms']:.1f} ms (p95, {top} clients), {srv['server']['workers']} worker "
        f"processes of {srv['server']['threads']} thread", MEASURED, (SRV,), "11", qualifier="whole body",
        measured_with=r.reference_step(SRV))]
