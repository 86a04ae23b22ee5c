"""Every claim of the seed report (``../shared/seed/``), judged from the files this repository commits.

``claims()`` gives each claim, in the seed's order, a **verdict** (reproduced, not reproduced, or not testable here /
not addressed, with a *because*) computed by a rule from ``results/*.json`` and ``checkpoints/*.json`` (or a committed
notebook's printed output where no JSON holds the numbers yet), never typed; the **kind of evidence** (measured here;
measured under our definition, a check of ours for a quantity the seed leaves undefined, with its chance level, floor
or ceiling; cost model only; not measured); the numbers; the files and chapter that show them. Each rule is a function
below, its threshold a constant. A latency gain is judged on **the column the seed used** (end to end: the full turn);
a number past the seed's band is labelled, never counted as reproduced. ``--markdown`` prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
NOT_TESTABLE, NOT_ADDRESSED = "not testable here", "not addressed"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE, NOT_ADDRESSED)
MEASURED, DEFINED = "measured here", "measured under our definition"
COST_MODEL, NOT_MEASURED = "cost model only", "not measured"
EVIDENCE = (MEASURED, DEFINED, COST_MODEL, NOT_MEASURED)

AGREE_POINTS = 10.0  # a percentage agrees with the seed's within this many percentage points
SPEEDUP_SLACK = 0.10  # a speed-up floor's tolerance, and the margin above which a speed-up is "larger"
CHANCE = 0.5  # two-way checks: which of two speakers; this conversation's style or another's
WORDS_KEPT_MAX_WER = 0.25  # the codebook swap keeps the words when at most one word in four changes
MINIMAL_WER_POINTS = 0.02  # "minimal quality loss": WER rises by at most two points
PARITY_TOL = 1e-4  # tests/test_parity.py's bound on |our logits - transformers' logits|
MLP_RATIO = 4  # the seed's d_model as our Llama blocks: a SwiGLU MLP this many times as wide, full attention
# the seed's numbers the rules use (its latency table and its five scores are in the JSONs that judge them)
SEED = {"sub_ms": 200, "d_model": 512, "n_layers": 12, "gpu_gb": 8, "codebooks": "8 + 8", "speculative_x": (2, 3),
        "int8_x": 2, "chunk_ms": 200}

LAT, QT, QV = "results/latency_table.json", "results/quality_table.json", "results/quality_validation.json"
INF, SRV, KV = "results/inference.json", "results/serving.json", "results/kv_cache_speedup.json"
GPU, KNOBS, PARITY = "results/paper_422m_gpu.json", "results/training_knobs.json", "results/parity.json"
CODEC, CODEC_CK = "results/codec.json", "checkpoints/codec_reference.json"
REF_3736 = "results/reference_3736_model.json"  # the reference's checkpoint JSON at step 3,736
NB03, NB06 = "notebooks/03_codec.ipynb", "notebooks/06_context_and_memory.ipynb"
VARIANTS = {k: f"checkpoints/csm_{k}.json" for k in ("plain", "memory", "cross_modal")}
NAMES = {"pipeline": "pipeline", "audiolm": "AudioLM-style", "valle": "VALL-E-style", "csm": "CSM"}
SCORES = ("character_consistency", "emotional_coherence", "prosodic_naturalness", "turn_taking_fluency",
          "voice_consistency")
# what chapters 03 and 06 printed (the codebook swap, the memory bank's and cross-attention's costs): no JSON yet
SWAP_SIM = r"sim_hybrid_to_([ab])\s+([\d.]+)"
SWAP_F0 = r"f0_closer_to_b_fraction\s+([\d.]+)\s*\npairs_with_pitch\s+([\d.]+)"
SWAP_WER = r"wer_hybrid_vs_recon_a_transcript\s+([\d.]+)"
BANK_FLOATS = r"memory bank at the reference width: [\d,]+ parameters, ([\d,]+) floats"
BANK_VS_KV = r"after (\d+) turns \(\d+ positions\): [\d,]+ floats of KV cache = (\d+)x"
CROSS_SAVED = r"(?m)^\s*\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+(0\.\d+)\s*\\?$"
ORDER = ("stages", "context", "robotic", "architecture", "rvq", "cross_modal", "memory", "params", "gpu_8gb",
         "gpu_ms", "end_to_end", "naturalness", "amp", "accumulation", "empty_cache", "latency", "ordering",
         "gain_csm", "gain_audiolm", "gain_valle", *SCORES, "windows", "interpolate", "chunked", "serving",
         "kv_cache", "speculative", "flash", "int8_speed", "int8_quality", "chunks", "chunks_20ms", "video",
         "personal", "available")


@dataclass(frozen=True)
class Claim:
    """One seed claim and what this repository shows about it."""

    key: str  # its name in ORDER
    claim: str  # the seed's words, quoted or closely paraphrased
    verdict: str  # one of VERDICTS
    detail: str  # what was shown, with the numbers; "because ..." first when not testable or not addressed
    evidence: str  # one of EVIDENCE
    sources: tuple[str, ...] = ()  # the files that hold the numbers
    chapter: str = ""  # the notebooks that explain it ("09")
    floor: str = ""  # under our definition: its chance level, floor or ceiling
    qualifier: str = ""  # shown beside the verdict: "smaller gain", "higher", ...
    measured_with: str = ""  # the reference model that measured it, where the result says

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS or self.evidence not in EVIDENCE or (
                self.verdict in (NOT_TESTABLE, NOT_ADDRESSED) and not self.detail.startswith("because ")):
            raise ValueError(f"{self.key}: {self.verdict!r}, {self.evidence!r} (not testable or addressed: because?)")


class Results:
    """The committed files, each read once; ``files`` preloads any by path (a JSON's dict, a notebook's text)."""

    def __init__(self, root: Path | str = ".", files: dict | None = None):
        self.root, self.files = Path(root), dict(files or {})

    def __getitem__(self, path: str) -> dict:
        if path not in self.files:
            self.files[path] = json.loads((self.root / path).read_text())
        return self.files[path]

    def printed(self, notebook: str, pattern: str) -> list:
        """``re.findall(pattern)`` over what a committed notebook printed (its stored outputs); never empty."""
        if notebook not in self.files:
            outs = [o for c in json.loads((self.root / notebook).read_text())["cells"] for o in c.get("outputs", [])]
            self.files[notebook] = "\n".join("".join(o.get("text") or o.get("data", {}).get("text/plain", ""))
                                             for o in outs)
        if not (found := re.findall(pattern, self.files[notebook])):
            raise LookupError(f"{notebook} printed nothing matching {pattern!r}")
        return found

    def reference_step(self, path: str) -> str:
        """'reference at step 7,800' (``measured_with``); results older than that record were made at step 3,736."""
        return f"reference at step {(self[path].get('measured_with') or self[REF_3736])['steps']:,}"


def agree(ours: float, seed: float, points: float = AGREE_POINTS) -> tuple[str, str]:
    """A percentage on the seed's column: reproduced within ``points``; else labelled a larger or smaller gain."""
    close = abs(ours - seed) <= points
    return (REPRODUCED, "") if close else (NOT_REPRODUCED, "larger gain" if ours > seed else "smaller gain")


def gain_pct(ms: float, pipeline_ms: float) -> float:
    """The seed's "Improvement" column: (pipeline - system) / pipeline, in percent."""
    return 100 * (pipeline_ms - ms) / pipeline_ms


def under(ms: float, bar: float) -> str:
    """A latency bar: reproduced when the median is under it."""
    return REPRODUCED if ms < bar else NOT_REPRODUCED


def against_interval(seed: float, interval: list[float]) -> tuple[str, str]:
    """A score: reproduced when the seed's number lies inside our 95% interval; else higher or lower."""
    lo, hi = interval
    return (REPRODUCED, "") if lo <= seed <= hi else (NOT_REPRODUCED, "higher" if lo > seed else "lower")


def speedup(ours: float, low: float, high: float) -> tuple[str, str]:
    """A speed-up floor ("2x", "2-3x"): reproduced from (1 - slack) x ``low``; "larger" above (1 + slack) x ``high``."""
    met = ours >= (1 - SPEEDUP_SLACK) * low
    return (REPRODUCED, "larger" if ours > (1 + SPEEDUP_SLACK) * high else "") if met else (NOT_REPRODUCED, "")


def apart(a: list[float], b: list[float]) -> bool:
    """Two 95% intervals that do not overlap."""
    return a[1] < b[0] or b[1] < a[0]


def pair(slower: list[float], faster: list[float]) -> str:
    """One ordered pair of latency intervals: confirmed, reversed, or unresolved (they overlap)."""
    return "confirmed" if slower[0] > faster[1] else "reversed" if faster[0] > slower[1] else "unresolved"


def helps(variant: dict, plain: dict, keys: tuple[str, ...]) -> tuple[list[str], bool]:
    """Measures with intervals apart, and whether ``variant`` helps: better on all of them (WER: lower)."""
    differ = [k for k in keys if apart(variant[f"{k}_ci95"], plain[f"{k}_ci95"])]
    return differ, bool(differ) and all((variant[k] > plain[k]) != (k == "wer") for k in differ)


def above_chance(interval: list[float]) -> str:
    """Where a two-way check's interval lies: above, below or at chance."""
    return "above chance" if interval[0] > CHANCE else "below chance" if interval[1] < CHANCE else "at chance"


def llama_stack_parameters(dim: int, layers: int, mlp_ratio: int = MLP_RATIO) -> int:
    """``layers`` of our Llama blocks (``backbone.Block``): q, k, v, o (4 dim^2), a SwiGLU MLP, two RMSNorms."""
    return layers * (4 * dim * dim + 3 * dim * mlp_ratio * dim + 2 * dim)


def ci(summary: dict, key: str) -> str:
    """A summary's ``key`` with its interval: '0.92 [0.86–0.96]'."""
    lo, hi = summary[f"{key}_ci95"]
    return f"{summary[key]:.2f} [{lo:.2f}–{hi:.2f}]"


def span(values: list[float], unit: str = " GB") -> str:
    """'7.00–7.26 GB', or '7.00 GB' when both ends print the same."""
    lo, hi = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


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


def training_claims(r: Results) -> list[Claim]:
    """422M parameters, 8 GB, mixed precision, accumulation, empty_cache: the GPU grid of chapter 07."""
    g, knobs, cap = r[GPU], r[KNOBS], r[GPU]["cap_bytes"] / 1e9
    judged = partial(Claim, evidence=MEASURED, sources=(GPU,), chapter="07")
    peaks = lambda rows: span([x["max_allocated_gb"] for x in rows])  # noqa: E731
    fit = [x for x in g["grid"] if x["max_allocated_gb"] <= cap]
    kind = lambda x: (x["fused_adam"], x["checkpointing"])  # noqa: E731
    kinds = {k: [x for x in fit if kind(x) == k] for k in map(kind, fit)}  # (fused, checkpointing) -> under the cap
    under_cap = "; ".join(f"{'fused' if fused else 'default'} AdamW {'with' if ckpt else 'without'} checkpointing at "
                          f"micro-batch {', '.join(map(str, sorted({x['micro_batch'] for x in rows})))} ({peaks(rows)})"
                          for (fused, ckpt), rows in sorted(kinds.items()))
    ran = [c for c in g["capped"] if c["fits"]]
    run = (ran or g["capped"])[0]
    batch = (f"{run['micro_batch'] * run['accum']} windows of {g['positions_per_window']} positions in "
             f"{run['accum']} micro-batches of {run['micro_batch']}")
    peak = f"{run['max_allocated_gb']:.2f} GB" if run["fits"] else "out of memory"
    big = max(x["micro_batch"] for x in g["grid"])
    state = sum(g["grid"][0]["estimate_parts_gb"][k] for k in ("weights", "gradients", "optimizer"))
    oom = any(not c["fits"] and not c["fused_adam"] for c in g["capped"])
    return [judged(
        "params", '"Parameters: 422M" with `d_model=512, n_layers=12`', NOT_TESTABLE,
        f"because the seed's modules are not specified. As our Llama blocks (an MLP {MLP_RATIO}x as wide) its own "
        f"d_model and n_layers give {llama_stack_parameters(SEED['d_model'], SEED['n_layers']) / 1e6:.1f}M parameters; "
        f"the model of the seed's size here (`{g['model']}`, {g['parameters'] / 1e6:.1f}M, exact) has our dimensions",
        chapter="06, 07"), judged(
        "gpu_8gb", '"fits in 8GB GPU memory": training on an 8 GB GPU', REPRODUCED if fit and ran else NOT_REPRODUCED,
        f"on an {g['provenance']['device']}, peak `max_memory_allocated` of {len(g['grid'])} configurations run "
        f"uncapped, against a {cap:.1f} GB cap (an {SEED['gpu_gb']} GB card less its CUDA context). Under it: "
        f"{under_cap or 'none'}. With PyTorch's default AdamW none "
        f"({peaks([x for x in g['grid'] if not x['fused_adam']])})"
        + (", and its run under an allocator cap of that size ran out of memory" if oom else "")
        + f". Run under that cap: {batch}, checkpointing, fused AdamW, {' or '.join(c['amp'] for c in ran) or '-'}: "
        f"peak {peak}, {run.get('positions_per_s', 0):,.0f} positions/s",
        qualifier="with a fused AdamW step" if fit and ran and all(x["fused_adam"] for x in fit + ran) else ""), judged(
        "amp", 'mixed precision is "essential for GPU memory efficiency"', NOT_ADDRESSED,
        f"because no run without it was measured on the GPU (the grid ran "
        f"{' and '.join(sorted({x['amp'] for x in g['grid'] + g['capped']}))} only). AMP keeps fp32 weights, gradients "
        f"and AdamW moments, {state:.1f} GB for `{g['model']}` with or without it, and shrinks activations. On this "
        f"CPU ({knobs['torch_threads']} threads) bf16 autocast takes {knobs['vs_fp32']['bf16 autocast']:.2f}x the time "
        f"of fp32 per training step: speed, not memory", evidence=NOT_MEASURED, sources=(GPU, KNOBS)), judged(
        "accumulation", 'gradient accumulation gives "larger effective batch sizes"',
        REPRODUCED if any(c["accum"] > 1 for c in ran) else NOT_REPRODUCED,
        f"{batch} under the {cap:.1f} GB cap: peak {peak}, where one micro-batch of {big} windows peaks at "
        f"{peaks([x for x in g['grid'] if x['micro_batch'] == big])}; `tests/test_train.py` checks that accumulated "
        f"steps give the weights of one batch"), judged(
        "empty_cache", '`torch.cuda.empty_cache()` every 20 steps, "critical for 8GB GPUs"', NOT_ADDRESSED,
        "because no run compared training with and without it; the runs under the allocator cap did not call it",
        evidence=NOT_MEASURED)]


def inference_claims(r: Results) -> list[Claim]:
    """GPU inference, the KV cache, speculation, flash attention, INT8 and chunks: chapters 04 and 08."""
    inf, kv = r[INF], r[KV]
    judged = partial(Claim, evidence=MEASURED, sources=(INF,), chapter="08", measured_with=r.reference_step(INF))
    vs, spec, q8, wer = inf["vs_transformers"], inf["speculative"], inf["int8"], inf["int8"]["quality"]
    gpu = {k: inf["cost_model"][k]["gpu"]["RTX 4090 (consumer GPU)"] for k in ("reference", "paper_422m")}
    att = {(x["length"], x["mode"]): x for x in inf["attention"]["rows"]}
    n, rows, big = max(length for length, _ in att), kv["rows"], q8["paper_422m_random"]
    flash, math = "sdpa flash (CPU kernel)_ms", "plain math (repeat K/V)_ms"
    rise, overlap = wer["int8"]["wer"] - wer["fp32"]["wer"], not apart(wer["int8"]["wer_ci95"], wer["fp32"]["wer_ci95"])
    frame_ms, fa = 1e3 / r[CODEC_CK]["config"]["frame_rate"], inf["first_audio"]["rows"]
    fixed = sorted({x["chunk_frames"] for x in fa if x["chunk_frames"] == x["first_chunk_frames"]})
    growing = sorted({x["chunk_frames"] for x in fa if x["chunk_frames"] != x["first_chunk_frames"]})
    below = max(c for c in fixed if c * frame_ms < SEED["chunk_ms"])  # the largest fixed chunk under the seed's
    turns = inf["first_audio_floor"]["context_turns"]  # the context of chapter 08's time-to-first-audio rows
    near = {x["state"]: x["first_audio_ms"] for x in fa
            if x["chunk_frames"] == x["first_chunk_frames"] == below and x["context_turns"] == turns}
    spec_verdict, spec_label = speedup(max(spec[m]["speedup_x"] for m in ("greedy", "sampled")), *SEED["speculative_x"])
    int8_verdict, int8_label = speedup(big["speedup_x"], SEED["int8_x"], SEED["int8_x"])
    return [judged(
        "gpu_ms", '"3.5ms inference (GPU)"', NOT_TESTABLE,
        f"because no GPU ran inference here (nor does the seed say per what: a frame? a token?). A cost model of one "
        f"frame (FLOPs, bytes read, kernels in sequence) predicts on an RTX 4090 "
        f"{gpu['reference']['predicted_eager_ms']:.2f} ms for the reference in eager PyTorch, "
        f"{gpu['reference']['predicted_cuda_graphs_ms']:.2f} ms with CUDA graphs; "
        f"{gpu['paper_422m']['predicted_eager_ms']:.2f} / {gpu['paper_422m']['predicted_cuda_graphs_ms']:.2f} ms for "
        f"`paper_422m` in bf16. On this CPU the reference takes {vs['fast_compiled']['marginal_per_frame_ms']:.2f} ms "
        f"per frame compiled; transformers' `generate`, uncompiled and without its static cache, "
        f"{vs['transformers']['marginal_per_frame_ms']:.2f} ms ({vs['fast_compiled_vs_transformers_x']:.2f}x slower): "
        f"its compiled recipe was not measured, so this is no comparison with transformers at its best",
        evidence=COST_MODEL), Claim(
        "kv_cache", 'KV cache: "reuse attention computations"',
        REPRODUCED if all(x["speedup_x"] > 1 for x in rows) else NOT_REPRODUCED,
        f"as a speed-up at every context measured (the seed gives no number): {rows[-1]['speedup_x']:.0f}x per "
        f"generated position at {rows[-1]['context']:,} positions of context ({rows[-1]['no_cache_ms']:.0f} vs "
        f"{rows[-1]['cache_ms']:.1f} ms), {rows[0]['speedup_x']:.1f}x at {rows[0]['context']}; the reference "
        f"backbone, untrained weights, {kv['torch_threads']} thread", MEASURED, (KV,), "04"), judged(
        "speculative", 'speculative decoding: "2-3x speedup for common phrases"', spec_verdict,
        f"an n-gram draft of whole frames (prompt lookup over the conversation's codes, {spec['draft_frames']} frames "
        f"checked in one backbone pass) kept {spec['greedy']['kept']} of {spec['greedy']['drafted']} drafted frames "
        f"greedy and {spec['sampled']['kept']} of {spec['sampled']['drafted']} sampled: "
        f"{spec['greedy']['speedup_x']:.2f}x / {spec['sampled']['speedup_x']:.2f}x. No trained draft model was tried",
        qualifier=spec_label), judged(
        "flash", 'flash attention: "memory-efficient attention computation"', NOT_ADDRESSED,
        f"because only time was measured, not memory: PyTorch's CPU flash kernel takes {att[n, 'prefill'][flash]:.1f} "
        f"ms for a {n:,}-position causal prefill at the reference backbone's shapes, plain math "
        f"{att[n, 'prefill'][math]:.1f} ms; decoding one position, {att[n, 'decode'][flash]:.3f} vs "
        f"{att[n, 'decode'][math]:.3f} ms", evidence=NOT_MEASURED), judged(
        "int8_speed", 'INT8: "2x inference speedup"', int8_verdict,
        f"PyTorch's dynamic INT8 linear layers on this CPU (no GPU): {big['speedup_x']:.2f}x faster per frame at the "
        f"seed's size (`paper_422m`, {big['parameters'] / 1e6:.1f}M parameters, random weights), "
        f"{q8['reference']['speedup_x']:.2f}x at the reference's {q8['reference']['parameters'] / 1e6:.1f}M, where "
        f"quantising each input costs more than the smaller weights save",
        qualifier=", ".join(filter(None, [int8_label, "at the seed's size"]))), judged(
        "int8_quality", 'INT8: "minimal quality loss"', REPRODUCED if rise <= MINIMAL_WER_POINTS else NOT_REPRODUCED,
        f"WER on {wer['turns']} held-out turns at the reference (where INT8 is slower), not at the seed's size: "
        f"{wer['fp32']['wer']:.1%} fp32, {wer['int8']['wer']:.1%} INT8, {100 * rise:+.1f} points"
        + (", intervals overlapping: too few turns to tell a minimal loss from a real one" if overlap else "")
        + f"; rule: at most {100 * MINIMAL_WER_POINTS:g} points",
        qualifier="not shown" if overlap and rise > MINIMAL_WER_POINTS else ""), judged(
        "chunks", 'streaming: "Current: 200ms chunks"', NOT_TESTABLE,
        f"because a {SEED['chunk_ms']} ms chunk is {SEED['chunk_ms'] / frame_ms:g} frames of the {1e3 / frame_ms:g} "
        f"Hz codec. Chunks measured: fixed {', '.join(f'{c * frame_ms:,.0f}' for c in fixed)} ms, and growing from "
        f"one frame to {' and '.join(map(str, growing))} frames. With {below * frame_ms:.0f} ms chunks after {turns} "
        f"context turns the first audio comes in {near['stateless']:.1f} ms (stateless) / {near['kept']:.1f} ms "
        f"(kept state)", sources=(INF, CODEC_CK))]


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


PLAN = "because it is a plan for future work, not a result"
UNADDRESSED = {  # key -> (the seed's claim, verdict, why)
    "robotic": ('a pipeline\'s output "sounds robotic and disconnected"', NOT_TESTABLE, "because no listening test "
                "was run here (the seed reports none either); chapters 09 and 10 let a reader hear each system"),
    "windows": ("Windows: DataLoader with `num_workers=0`", NOT_TESTABLE, "because this workbook runs on Linux only"),
    "interpolate": ("cross-attention over different lengths needs `F.interpolate`", NOT_ADDRESSED,
                    "because attention needs no equal lengths: the cross-modal layer built here "
                    "(`csm_lib/seed_variants.py`) lets any number of voice frames attend to any number of text tokens"),
    "chunked": ('"start with smaller chunks": a 422M model run in chunks of 512 positions', NOT_ADDRESSED,
                "because the memory question was answered with micro-batches, checkpointing and a fused AdamW step "
                "(rows above); running chunks without the earlier chunks' state was not measured"),
    "chunks_20ms": ('"Target: 20ms chunks with overlap-add"', NOT_ADDRESSED, PLAN),
    "video": ("multimodal integration: video understanding", NOT_ADDRESSED, PLAN),
    "personal": ("personalization: fine-tune on specific voices", NOT_ADDRESSED, PLAN),
    "available": ('code, weights and a demo "available" (GitHub, HuggingFace Hub, csm-demo.com)', NOT_TESTABLE,
                  "because the addresses are placeholders (`your-username`) and this workbook fetches nothing"),
}


def claims(root: Path | str = ".", results: Results | None = None) -> list[Claim]:
    """Every seed claim, in the order the seed report makes them (``ORDER``), judged from the files under ``root``."""
    r = results or Results(root)
    judged = [*latency_claims(r), *quality_claims(r), *architecture_claims(r), *training_claims(r),
              *inference_claims(r), *serving_claims(r), *(Claim(k, *v, NOT_MEASURED) for k, v in UNADDRESSED.items())]
    by_key = {c.key: c for c in judged}
    assert sorted(by_key) == sorted(ORDER) and len(judged) == len(ORDER), "ORDER names every claim once"
    return [by_key[k] for k in ORDER]


def markdown(rows: list[Claim] | None = None) -> str:
    """The README's "Seed claims: status" table: claim, verdict, evidence, what was shown, where."""
    lines = ["| seed claim | verdict | evidence | what was shown | where |", "|---|---|---|---|---|"]
    for c in rows if rows is not None else claims():
        chapter = f"chapter{'s' if ',' in c.chapter else ''} {c.chapter}" if c.chapter else ""
        where = "; ".join(p for p in (", ".join(f"`{s}`" for s in c.sources), chapter, c.measured_with) if p)
        lines.append(f"| {c.claim} | **{c.verdict}**{f' ({c.qualifier})' if c.qualifier else ''} | {c.evidence}"
                     f"{f' ({c.floor})' if c.floor else ''} | {c.detail} | {where or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m csm_lib.verdicts", description="The seed's claims, judged.")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.add_argument("--root", default=".", help="the repository (results/, checkpoints/, notebooks/)")
    a = p.parse_args(argv)
    rows = claims(a.root)
    print(markdown(rows) if a.markdown else "\n".join(f"{c.verdict:<18} {c.evidence:<30} {c.claim}" for c in rows))


if __name__ == "__main__":
    main()
