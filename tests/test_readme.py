"""The README's numbers against the files they come from.

``ENTRIES`` is the whole mapping, one line per number: the README row (a stable substring of one
table row, or of one prose paragraph), the source, how to read it, and how the README prints it.
Sources:

* a JSON file (``results/*.json``, a checkpoint's JSON sidecar): ``key`` is a list of keys and list
  indices, or a function of the loaded JSON for a number derived from several keys;
* a committed notebook (``.ipynb``), for numbers no JSON holds yet: ``key`` is a regular expression
  searched in the notebook's stored outputs (what ``make workbook`` printed), with one group, or
  ``(regex, function of re.findall's list)``;
* another text file (a test's bound, ``pyproject.toml``'s pins): ``key`` is a regex with one group;
* ``None``: ``key`` is a function computing an exact number (parameter counts on the meta device).

``fmt`` is a ``str.format`` pattern or a function; the formatted text must appear in the row as a
whole (not inside a longer number). ``test_every_number_in_the_tables_is_checked`` then fails on any
number in the two result tables that no entry produced and ``ALLOWED`` does not explain, so a new
number needs a new entry.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from csm_lib.checkpoint import fingerprint
from csm_lib.judges.quality import SEED_SCORES
from csm_lib.train import total_seconds

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TABLES = ("## What is measured so far", "## Seed claims: status")  # headings of the tables checked for coverage


def up1(x: float) -> str:
    """``x`` rounded *up* to one significant digit, as the README prints float noise: 4.77e-07 -> '5e-7'."""
    if x <= 0:
        return "0"
    e = math.floor(math.log10(x))
    m = math.ceil(x / 10**e - 1e-9)
    if m == 10:
        m, e = 1, e + 1
    return f"{m}e{e}"


def pts(x: float) -> str:
    """A difference of rates in signed percentage points: -0.0241 -> '-2.4'."""
    return f"{x * 100:+.1f}"


def num(s: str) -> float:
    """A number as a notebook printed it ('1,187,584', '0.673')."""
    return float(s.replace(",", ""))


@cache
def _param_counts(preset: str) -> dict[str, int]:
    import torch

    from csm_lib.model import CSM, PRESETS

    with torch.device("meta"):
        return CSM(PRESETS[preset]).num_parameters()


def params(preset: str, part: str = "total"):
    return lambda: _param_counts(preset)[part]


SEED_STACK = {"dim": 512, "layers": 12, "hidden": 2048}  # the seed's d_model and n_layers; a 4 x d_model MLP


def llama_stack_params() -> int:
    """The seed's d_model=512, n_layers=12 as our Llama blocks (full multi-head attention, SwiGLU MLP)."""
    import torch

    from csm_lib.backbone import Block, TransformerConfig

    dim, layers, hidden = SEED_STACK.values()
    with torch.device("meta"):
        block = Block(TransformerConfig(dim, layers, 8, 8, hidden), 0)
    return layers * sum(p.numel() for p in block.parameters())


def stage_loss(stage: int, hours: float, split: str) -> Callable[[dict], float]:
    """The codebook-0 loss of make model's stage ``stage`` (1 or 2) on ``split`` windows of the corpus of ``hours``."""
    def get(d: dict) -> float:
        model = list(d["models"].values())[stage - 1]
        return next(c[split] for c in model["c0_loss"].values() if c["hours"] == hours)
    return get


def threads(device: str) -> int:
    """'x86_64 CPU, 2 threads' -> 2."""
    return int(re.search(r"(\d+) threads?", device).group(1))


def grid_gb(d: dict, fused: bool, checkpointing: bool | None, pick) -> float:
    """``pick`` (min / max) of the measured peak over paper_422m_gpu.json's grid rows of one optimizer."""
    return pick(r["max_allocated_gb"] for r in d["grid"]
                if r["fused_adam"] == fused and checkpointing in (None, r["checkpointing"]))


RATIO = lambda d: [r["estimate_gb"] / r["max_allocated_gb"] for r in d["grid"]]  # noqa: E731
SWAP = r"f0_closer_to_b_fraction\s+([\d.]+)\s*\npairs_with_pitch\s+([\d.]+)"  # chapter 03's swap summary
FIT = r"window_seconds\s*\n\s*\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)"  # chapter 06 §2
BANK = r"after (\d+) turns \(\d+ positions\): [\d,]+ floats of KV cache = (\d+)x"  # chapter 06 §4
XCOST = r"(?m)^\s*\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+(0\.\d+)\s*\\?$"  # chapter 06's table: 'saved' per turn

K = "results/kv_cache_speedup.json"
GPU = "results/paper_422m_gpu.json"
NB06 = "notebooks/06_context_and_memory.ipynb"
NB01 = "notebooks/01_data.ipynb"
REF = "results/reference_model.json"
SWEEP = "results/temperature_sweep.json"
TI = "results/text_input.json"
CK = "checkpoints/csm_reference.json"
CK_3736 = "results/reference_3736_model.json"  # the reference's checkpoint JSON at step 3,736 (git show 1c59e65:CK)
# results measured with the reference CSM: each says which (``measured_with``), or predates that record
REFERENCE_RESULTS = ("results/reference_model.json", "results/inference.json", "results/latency_table.json",
                     "results/serving.json", "results/quality_table.json", "results/pronunciation.json")
STUDY = "results/alignment_study.json"  # make alignment-study
STAGES = "results/reference_stages.json"  # make model's two stages on the same windows (evaluate losses)
REF_6000 = "results/reference_model_6000.json"  # make model-eval on the reference at the end of stage 1
CK_6000 = "results/reference_6000_model.json"  # its checkpoint JSON
FORTY = "results/reference_40h_model.json"
OLD = "results/reference_model_40h_templates.json"
INF = "results/inference.json"
LAT = "results/latency_table.json"
SRV = "results/serving.json"
QV = "results/quality_validation.json"
QROW = "| the seed's five scores as checks on"


def ttfa(n: int, chunk: int, state: str, key: str, first: int | None = None):
    """A row of inference.json's time-to-first-audio table (fixed chunks unless ``first`` says where they grow from)."""
    first = chunk if first is None else first
    return lambda d: next(r[key] for r in d["first_audio"]["rows"]
                          if (r["context_turns"], r["chunk_frames"], r["first_chunk_frames"], r["state"])
                          == (n, chunk, first, state))


def attention_ms(mode: str, kind: str):
    return lambda d: next(r[f"{kind}_ms"] for r in d["attention"]["rows"] if (r["length"], r["mode"]) == (2000, mode))


def first_ms(system: str, column: str = "speech_out"):
    """A system's median latency in latency_table.json: speech out (first audio) or full turn."""
    if column == "full_turn":
        return ["full_turn", "systems", system, "median_ms"]
    return ["speech_out", system, "first_audio", "median_ms"]


def curve_ms(system: str, reply_s: int):
    return lambda d: next(p["first_audio_ms"] for p in d["length_curve"]["curves"][system] if p["reply_s"] == reply_s)


def csm_improvement(d: dict) -> float:
    return next(r["improvement_pct"] for r in d["table"] if r["system"] == "csm")


def minutes(d: dict) -> float:
    return d["wall_time_s"] / 60



QT = "results/quality_table.json"
PR = "results/pronunciation.json"
QTROW = "| the quality table: 9 systems"
PRROW = "| homographs / pronunciation continuation"
FIVE = "| the five quality scores (Character Consistency"
BANKS = "| cross-modal attention, dual memory banks"
NAT = '| "0.89 naturalness"'


def ci(key: str, prefix: str = "") -> Callable[[dict], str]:
    """A quality summary's ``key`` as the README prints it: ``prefix + "0.92 [0.86–0.96]"``."""
    def fmt(s: dict) -> str:
        lo, hi = s[f"{key}_ci95"]
        return f"{prefix}{s[key]:.2f} [{lo:.2f}–{hi:.2f}]"
    return fmt


def share(v: dict, prefix: str = "", suffix: str = "") -> str:
    """A pronunciation summary as the README prints it: ``prefix + "0.50 [0.36–0.64]" + suffix``."""
    return f"{prefix}{v['score']:.2f} [{v['ci95'][0]:.2f}–{v['ci95'][1]:.2f}]{suffix}"


def system(name: str) -> list[str]:
    return ["systems", name, "summary"]

RTX = ["cost_model", "reference", "gpu", "RTX 4090 (consumer GPU)"]
RTX_BIG = ["cost_model", "paper_422m", "gpu", "RTX 4090 (consumer GPU)"]

# (README row label, source file, key, format)
ENTRIES = [
    ("| cross-modal attention, dual memory banks", "checkpoints/csm_plain.json", ["steps"], "(to step {})"),
    ("| cross-modal attention, dual memory banks", "checkpoints/csm_memory.json", ["steps"], "(to step {})"),
    ("| cross-modal attention, dual memory banks", "checkpoints/csm_cross_modal.json", ["steps"], "(to step {})"),
    ("| cross-modal attention, dual memory banks", "checkpoints/csm_plain.json", ["valid", "valid_c0_loss"],
     "plain {:.3f}"),
    ("| cross-modal attention, dual memory banks", "checkpoints/csm_memory.json", ["valid", "valid_c0_loss"],
     "memory bank {:.3f}"),
    ("| cross-modal attention, dual memory banks", "checkpoints/csm_cross_modal.json", ["valid", "valid_c0_loss"],
     "cross-modal {:.3f}"),
    (QROW, QV, ["n_turns"], "on {} held-out"),
    (QROW, QV, ["calibration", "n"], "from {} valid"),
    (QROW, QV, lambda d: len(d["checks"]), "in all {} checks"),
    (QROW, QV, lambda d: all(c["separated"] for c in d["checks"].values()),
     lambda ok: "apart in all" if ok else "some intervals overlap"),
    *[("| the five quality scores (Character Consistency", None, lambda k=k: SEED_SCORES[k], f"{name} {{}}")
      for k, name in (("character_consistency", "Character Consistency"),
                      ("emotional_coherence", "Emotional Coherence"),
                      ("prosodic_naturalness", "Prosodic Naturalness"),
                      ("turn_taking_fluency", "Turn-taking Fluency"), ("voice_consistency", "Voice Consistency"))],
    (QROW, QV, ["summaries", "ground_truth", "character_consistency"], "consistency {:.2f} vs"),
    (QROW, QV, ["summaries", "wrong_speaker", "character_consistency"], "vs {:.2f} (wrong speaker)"),
    (QROW, QV, ["summaries", "ground_truth", "emotional_coherence"], "coherence {:.2f} vs"),
    (QROW, QV, ["summaries", "other_style", "emotional_coherence"], "vs {:.2f} (another"),
    (QROW, QV, ["summaries", "ground_truth", "prosodic_naturalness"], "naturalness {:.2f} vs"),
    (QROW, QV, ["summaries", "shuffled_frames", "prosodic_naturalness"], "vs {:.2f} (shuffled"),
    (QROW, QV, ["summaries", "ground_truth", "turn_taking_fluency"], "fluency {:.2f} vs"),
    (QROW, QV, ["summaries", "truncated", "turn_taking_fluency"], "vs {:.2f} (cut off)"),
    (QROW, QV, ["summaries", "ground_truth", "voice_consistency"], "voice consistency {:.2f} vs"),
    (QROW, QV, ["summaries", "spliced_voices", "voice_consistency"], "vs {:.2f} (two voices"),
    # --- chapter 10's systems table and pronunciation checks ---------------------------------------------------
    (QTROW, QT, lambda d: len(d["systems"]), "{} systems"),
    (QTROW, QT, ["n_turns"], "same {} held-out"),
    (QTROW, QT, lambda d: len(d["seeds"]), "x {} sampling seeds"),
    (QTROW, QT, system("csm"), ci("character_consistency", "character consistency ")),
    (QTROW, QT, system("csm_no_context"), ci("character_consistency", "vs ")),
    (QTROW, QT, ["systems", "csm", "summary", "sim"], "SIM {:.2f} vs"),
    (QTROW, QT, ["systems", "csm_no_context", "summary", "sim"], "vs {:.2f};"),
    *[(QTROW, QT, system("csm"), ci(k, k.replace("_", " ").replace("turn taking", "turn-taking") + " "))
      for k in ("emotional_coherence", "prosodic_naturalness", "turn_taking_fluency", "voice_consistency")],
    (QTROW, QT, ["systems", "csm", "summary", "wer"], "WER {:.2f}"),
    (QTROW, QT, ["systems", "ground_truth", "summary", "wer"], "(ground truth {:.2f})"),
    (PRROW, PR, ["validation", "homograph", "accuracy"], "right on {:.2f} /"),
    (PRROW, PR, ["validation", "continuation", "accuracy"], "/ {:.2f} of respelt"),
    (PRROW, PR, ["systems", "csm", "homograph"], lambda v: share(v, "CSM ", " /")),
    (PRROW, PR, ["systems", "csm", "continuation"], lambda v: share(v, "/ ")),
    (PRROW, PR, ["systems", "flite", "continuation", "score"], "(chance {})"),
    (PRROW, PR, ["systems", "csm", "homograph", "lexicon_share"], "reading in {:.2f} /"),
    (PRROW, PR, ["systems", "csm", "continuation", "lexicon_share"], "/ {:.2f} of"),
    (PRROW, PR, ["systems", "csm", "homograph", "n"], "of {} /"),
    (PRROW, PR, ["systems", "csm", "continuation", "n"], "/ {} samples"),
    (PRROW, PR, ["systems", "flite", "homograph", "score"], "tagger {:.2f} on"),
    (FIVE, QT, ["n_turns"], "{} held-out turns"),
    (FIVE, QT, lambda d: len(d["seeds"]), "x {} seeds"),
    (FIVE, QT, system("csm"), ci("character_consistency", "(")),
    (FIVE, QT, system("csm"), ci("voice_consistency", "(")),
    *[(FIVE, QT, system("csm"), ci(k)) for k in ("emotional_coherence", "prosodic_naturalness", "turn_taking_fluency")],
    (FIVE, QV, ["summaries", "codec_resynthesis", "prosodic_naturalness"], "ceiling ({:.2f} and"),
    (FIVE, QV, ["summaries", "codec_resynthesis", "turn_taking_fluency"], "and {:.2f})"),
    (NAT, QT, system("csm"), ci("prosodic_naturalness", "naturalness, is ")),
    (NAT, QT, system("ground_truth"), ci("prosodic_naturalness", "and ")),
    (BANKS, QT, ["n_turns"], "{} held-out turns"),
    (BANKS, QT, lambda d: len(d["seeds"]), "x {} seeds"),
    (BANKS, QT, system("csm_memory"), ci("character_consistency", "character consistency ")),
    (BANKS, QT, system("csm_plain"), ci("character_consistency", "plain CSM's ")),
    (BANKS, QT, ["systems", "csm_memory", "summary", "sim"], "SIM {:.2f} vs"),
    (BANKS, QT, ["systems", "csm_plain", "summary", "sim"], "vs {:.2f}, as if"),
    (BANKS, None, lambda: _load("checkpoints/csm_memory.json")["steps"] - _load(CK_3736)["steps"], "{} steps did not"),
    (BANKS, CK_3736, ["steps"], "the reference at step {:,}"),
    ("| serving over HTTP (`make serve`", SRV, ["server", "workers"], ": {} worker processes"),
    ("| serving over HTTP (`make serve`", SRV, ["server", "threads"], "processes of {} thread"),
    ("| serving over HTTP (`make serve`", SRV, ["levels", "1", "requests"], "one client ({} requests)"),
    ("| serving over HTTP (`make serve`", SRV, ["levels", "8", "requests"], "8 clients ({} requests)"),
    ("| serving over HTTP (`make serve`", SRV, lambda d: max(int(k) for k in d["levels"]), "with {} clients"),
    ("| serving over HTTP (`make serve`", SRV, lambda d: max(int(k) for k in d["levels"]), "the slowest of the {} "),
    ("| serving over HTTP (`make serve`", SRV, ["levels", "1", "ttfb_p50_ms"], "| {:.1f} /"),
    ("| serving over HTTP (`make serve`", SRV, ["levels", "8", "ttfb_p95_ms"], "/ {:.1f} ms;"),
    ("| serving over HTTP (`make serve`", SRV, ["levels", "8", "rtf_max"], "RTF {:.3f}"),
    ("| serving over HTTP (`make serve`", SRV, ["levels", "8", "rtf_wall_max"], "({:.3f} counted"),
    ("| same, 8 clients: throughput", SRV, ["levels", "8", "throughput_audio_s_per_s"], "| {:.2f} /"),
    ("| same, 8 clients: throughput", SRV, ["no_batching", "8", "throughput_audio_s_per_s"], "/ {:.2f} /"),
    ("| same, 8 clients: throughput", SRV, ["one_worker_two_threads", "8", "throughput_audio_s_per_s"],
     "/ {:.2f} s of audio"),
    ("| same, 8 clients: throughput", SRV, lambda d: max(int(k) for k in d["levels"]), "same, {} clients"),
    ("| same, 8 clients: throughput", SRV, ["memory", "requests"], "over {} short"),
    ("| same, 8 clients: throughput", SRV, lambda d: d["memory"]["growth"] * 100, "{:+.2f}%"),
    ("| the server's schema fuzz", "tests/test_serve.py", r"assert total >= (\d+)", "at least {}"),
    ("| the server's schema fuzz", "tests/test_serve.py", r"\"temperature\": (1e-300)", lambda v: "1e-300"),
    ("| a FastAPI `/generate` with", SRV, ["levels", "1", "ttfb_p50_ms"], "{:.1f} ms p50"),
    ("| a FastAPI `/generate` with", SRV, ["levels", "8", "ttfb_p95_ms"], "{:.1f} ms p95"),
    ("| a FastAPI `/generate` with", SRV, lambda d: max(int(k) for k in d["levels"]), "with {} concurrent"),
    ("| a FastAPI `/generate` with", SRV, lambda d: max(int(k) for k in d["levels"]), "stream at {} clients"),
    ("| a FastAPI `/generate` with", SRV, ["levels", "8", "rtf_median"], "RTF {:.3f}"),
    ("| a FastAPI `/generate` with", SRV, ["levels", "8", "stall_max_ms"], "up to {:.1f} ms of pre-roll"),
    # --- chapter 09: the latency table ----------------------------------------------------------------------------
    ("| latency table, speech out", LAT, ["speech_out", "csm", "first_audio", "n"], "{} held-out replies"),
    ("| latency table, speech out", LAT, ["speech_out", "csm", "audio_s_median"], "(median {:.2f} s of audio)"),
    ("| latency table, speech out", LAT, ["torch_threads"], "one run, {} threads"),
    ("| latency table, speech out", LAT, lambda d: d["parameters"]["csm"] / 1e6, "about {:.1f} M parameters"),
    ("| latency table, speech out", LAT, first_ms("pipeline"), "| {:.1f} /"),
    ("| latency table, speech out", LAT, first_ms("audiolm"), "/ {:.1f} /"),
    ("| latency table, speech out", LAT, first_ms("valle"), "/ {:.1f} /"),
    ("| latency table, speech out", LAT, first_ms("csm"), "/ {:.1f} ms;"),
    ("| latency table, speech out", LAT, csm_improvement, "CSM {:+.1f}% against"),
    ("| latency table, speech out", None, lambda: 78.8, "(seed: +{:.1f}%)"),
    ("| same, full turn (the user's audio", LAT, first_ms("pipeline", "full_turn"), "| {:.1f} /"),
    ("| same, full turn (the user's audio", LAT, first_ms("audiolm", "full_turn"), "/ {:.1f} /"),
    ("| same, full turn (the user's audio", LAT, first_ms("valle", "full_turn"), "/ {:.1f} /"),
    ("| same, full turn (the user's audio", LAT, first_ms("csm", "full_turn"), "/ {:.1f} ms,"),
    ("| same, full turn (the user's audio", LAT, ["full_turn", "asr", "median_ms"], "takes {:.1f} ms"),
    ("| same, time to first audio for a 1 s", LAT, curve_ms("csm", 1), "| {:.1f} and"),
    ("| same, time to first audio for a 1 s", LAT, curve_ms("csm", 20), "and {:.1f} ms /"),
    ("| same, time to first audio for a 1 s", LAT, curve_ms("pipeline", 1), "/ {:.1f} and"),
    ("| same, time to first audio for a 1 s", LAT, curve_ms("pipeline", 20), "and {:.1f} ms |"),
    ("| same, time to first audio for a 1 s", LAT, lambda d: d["length_curve"]["curves"]["csm"][0]["reply_s"],
     "for a {} s and"),
    ("| same, time to first audio for a 1 s", LAT, lambda d: d["length_curve"]["curves"]["csm"][-1]["reply_s"],
     "and a {} s reply"),
    ("| do the systems speak?", LAT, ["speaks", "csm", "n"], "on the same {} replies"),
    ("| do the systems speak?", LAT, ["speaks", "pipeline", "wer"], "| {:.1%} /"),
    ("| do the systems speak?", LAT, ["speaks", "audiolm", "wer"], "/ {:.1%} /"),
    ("| do the systems speak?", LAT, ["speaks", "valle", "wer"], "/ {:.1%} /"),
    ("| do the systems speak?", LAT, ["speaks", "csm", "wer"], "/ {:.1%};"),
    ("| do the systems speak?", LAT, ["speaks", "ground_truth", "wer"], "; {:.1%}."),
    ("| do the systems speak?", "checkpoints/valle_reference.json", minutes, "trained {:.0f} min each"),
    ("| do the systems speak?", "checkpoints/audiolm_reference.json", minutes, "trained {:.0f} min each"),
    ("| do the systems speak?", None, lambda: total_seconds(_load(measured_with(LAT))["history"]) / 60,
     "(the CSM {:.0f} min"),
    ("| 180 ms end-to-end", LAT, csm_improvement, "as {:+.1f}% for speech out"),
    ("| 180 ms end-to-end", LAT, first_ms("csm", "full_turn"), "full turn takes {:.1f} ms"),
    ("| 180 ms end-to-end", LAT, ["full_turn", "asr", "median_ms"], ", {:.1f} of them speech recognition"),
    ("| 180 ms end-to-end", LAT, first_ms("csm"), "alone takes {:.1f} ms"),
    ("| 180 ms end-to-end", LAT, lambda d: d["configs"]["csm"]["n_codebooks"] - 1, "then {} passes over all frames"),
    ("| 180 ms end-to-end", LAT, lambda d: d["configs"]["csm"]["n_codebooks"], "TTS: {} sequential steps per frame"),
    ("| 180 ms end-to-end", None, lambda: 78.8, '"+{:.1f}%": **reproduced**'),
    ("| 180 ms end-to-end", None, lambda: 180, '"{} ms" end to end'),
    # --- chapter 08: inference ------------------------------------------------------------------------------------
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "frames"], "greedy, {} frames"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "prompt_tokens"], "same {}-token prompt"),
    ("| inference, reference CSM, greedy", INF, ["torch_threads"], ", {} threads:"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "fast_compiled", "marginal_per_frame_ms"],
     "| {:.2f} /"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "fast", "marginal_per_frame_ms"], "/ {:.2f} /"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "plain", "marginal_per_frame_ms"], "/ {:.2f} /"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "transformers", "marginal_per_frame_ms"],
     "/ {:.2f} ms:"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "fast_compiled_vs_transformers_x"],
     "{:.2f}x faster"),
    ("| inference, reference CSM, greedy", INF, ["vs_transformers", "fast_vs_transformers_x"], "(eager {:.2f}x)"),
    ("| fast path, per frame at", INF, lambda d: d["context"]["rows"][-1]["context"], "at {:,} vs"),
    ("| fast path, per frame at", INF, lambda d: d["context"]["rows"][0]["context"], "vs {} positions"),
    ("| fast path, per frame at", INF, lambda d: d["context"]["rows"][-1]["sdpa_ms"], "| {:.2f} vs"),
    ("| fast path, per frame at", INF, lambda d: d["context"]["rows"][0]["sdpa_ms"], "vs {:.2f} ms"),
    ("| fast path, per frame at", INF, lambda d: d["context"]["rows"][-1]["sdpa_vs_first"], "({:.2f}x)"),
    ("| time to first audio (the call", INF, ttfa(2, 1, "stateless", "context_turns"), "), {} flite context turns"),
    ("| time to first audio (the call", INF, ttfa(2, 1, "stateless", "context_audio_s"), "({:.2f} s)"),
    ("| time to first audio (the call", INF, ttfa(2, 1, "stateless", "first_audio_ms"), "| {:.1f} /"),
    ("| time to first audio (the call", INF, ttfa(2, 1, "kept", "first_audio_ms"), "/ {:.1f} ms;"),
    ("| time to first audio (the call", INF, ttfa(2, 1, "stateless", "rtf"), "RTF {:.3f}"),
    ("| time to first audio (the call", INF, ttfa(2, 16, "kept", "rtf", first=1), "({:.3f} with chunks growing"),
    ("| time to first audio (the call", INF, ttfa(2, 16, "kept", "first_chunk_frames", first=1), "growing {} →"),
    ("| time to first audio (the call", INF, ttfa(2, 16, "kept", "chunk_frames", first=1), "→ {} frames, kept"),
    ("| time to first audio (the call", INF, lambda d: ttfa(2, 16, "kept", "stalls_max", first=1)(d) == 0,
     "kept state, no stall"),
    ("| time to first audio (the call", INF, ["first_audio_floor", "stateless_floor_ms"], "floor {:.1f} ms"),
    ("| time to first audio (the call", INF, lambda d: sum(d["first_audio_floor"]["MFLOP"].values()), "({:,.0f} MFLOP"),
    ("| time to first audio (the call", INF, ["first_audio_floor", "peak_gflops"], "at {:.1f} GFLOP/s"),
    ("| time to first audio (the call", INF, lambda d: d["first_audio_floor"]["MFLOP"]["encode context"] / 1000,
     "{:.1f} GFLOP of it encoding"),
    ("| a conversation's second turn", INF, lambda d: int(d["second_turn"]["context"].split()[0]), "({} flite turns"),
    ("| a conversation's second turn", INF, ["second_turn", "stateless_first_audio_ms"], "| {:.1f} vs"),
    ("| a conversation's second turn", INF, ["second_turn", "kept_first_audio_ms"], "vs {:.1f} ms ("),
    ("| a conversation's second turn", INF, ["second_turn", "kept_vs_stateless_x"], "({:.2f}x)"),
    ("| a conversation's second turn", INF, ["second_turn", "stateless_from_audio_first_audio_ms"], "; {:.1f} ms ("),
    ("| a conversation's second turn", INF, ["second_turn", "kept_vs_stateless_from_audio_x"], "ms ({:.2f}x) when"),
    ("| a conversation's second turn", INF, ttfa(8, 1, "stateless", "first_audio_ms"), "; {:.1f} vs"),
    ("| a conversation's second turn", INF, ttfa(8, 1, "kept", "first_audio_ms"), "vs {:.1f} ms after"),
    ("| a conversation's second turn", INF, ttfa(8, 1, "kept", "context_turns"), "after {} flite turns"),
    ('| "3.5 ms inference (GPU)"', INF, RTX + ["predicted_eager_ms"], "predicts {:.2f} ms per frame"),
    ('| "3.5 ms inference (GPU)"', INF, RTX + ["predicted_cuda_graphs_ms"], "and {:.2f} ms with CUDA graphs"),
    ('| "3.5 ms inference (GPU)"', INF, RTX_BIG + ["predicted_eager_ms"], "and {:.2f} /"),
    ('| "3.5 ms inference (GPU)"', INF, RTX_BIG + ["predicted_cuda_graphs_ms"], "/ {:.2f} ms for"),
    ('| "3.5 ms inference (GPU)"', INF, ["vs_transformers", "fast_compiled", "marginal_per_frame_ms"],
     "the reference takes {:.2f} ms"),
    ("| speculative decoding,", INF, ["speculative", "draft_frames"], "{} frames checked"),
    ("| speculative decoding,", INF, ["speculative", "greedy", "kept"], "kept {} of"),
    ("| speculative decoding,", INF, ["speculative", "greedy", "drafted"], "of {} drafted frames greedy"),
    ("| speculative decoding,", INF, ["speculative", "sampled", "kept"], "and {} of"),
    ("| speculative decoding,", INF, ["speculative", "sampled", "drafted"], "of {} sampled"),
    ("| speculative decoding,", INF, ["speculative", "greedy", "speedup_x"], "({:.2f}x /"),
    ("| speculative decoding,", INF, ["speculative", "sampled", "speedup_x"], "/ {:.2f}x)"),
    ("| flash attention", INF, attention_ms("prefill", "sdpa flash (CPU kernel)"), "takes {:.1f} ms"),
    ("| flash attention", INF, lambda d: d["attention"]["rows"][-1]["length"], "for a {:,}-position"),
    ("| flash attention", INF, attention_ms("prefill", "plain math (repeat K/V)"), "plain math {:.1f} ms"),
    ("| flash attention", INF, attention_ms("decode", "sdpa flash (CPU kernel)"), "position, {:.3f} vs"),
    ("| flash attention", INF, attention_ms("decode", "plain math (repeat K/V)"), "vs {:.3f} ms"),
    ("| INT8,", INF, lambda d: d["int8"]["reference"]["parameters"] / 1e6, "the reference's {:.1f}M"),
    ("| INT8,", INF, ["int8", "paper_422m_random", "speedup_x"], "{:.2f}x faster per frame"),
    ("| INT8,", INF, ["int8", "reference", "speedup_x"], "the reference {:.2f}x"),
    ("| INT8,", INF, ["int8", "quality", "turns"], "on {} held-out turns"),
    ("| INT8,", INF, ["int8", "quality", "fp32", "wer"], "{:.1%} fp32"),
    ("| INT8,", INF, ["int8", "quality", "int8", "wer"], "{:.1%} INT8"),
    # --- What is measured so far ------------------------------------------------------------------------------
    ("| corpus synthesis speed", "results/corpus_build.json", ["hours"], "({:.0f} h of speech"),
    ("| corpus synthesis speed", "results/corpus_build.json", ["workers"], "{} worker processes"),
    ("| corpus synthesis speed", "results/corpus_build.json", ["turns"], "{} turns"),
    ("| corpus synthesis speed", "results/corpus_build.json", ["realtime_factor"], "{:.0f}x faster than real time"),
    ("| corpus synthesis speed", "results/corpus_build.json", ["build_seconds"], "({:.0f} s)"),
    ("| ground-truth WER, pocketsphinx", "results/judges_baseline.json", ["n_turns"], "({} turns)"),
    ("| ground-truth WER, pocketsphinx", "results/judges_baseline.json", ["wer_by_voice", "awb"], "awb {:.1%}"),
    ("| ground-truth WER, pocketsphinx", "results/judges_baseline.json", ["wer_by_voice", "rms"], "rms {:.1%}"),
    ("| ground-truth WER, pocketsphinx", "results/judges_baseline.json", ["wer_by_voice", "slt"], "slt {:.1%}"),
    ("| ground-truth WER, pocketsphinx", "results/judges_baseline.json", ["wer_by_voice", "kal16"], "kal16 {:.1%}"),
    ("| speaker similarity (resemblyzer)", "results/judges_baseline.json", ["sim", "same_voice_mean"], "{:.2f} vs"),
    ("| speaker similarity (resemblyzer)", "results/judges_baseline.json", ["sim", "different_voice_mean"],
     "vs {:.2f}"),
    ("| F0 tracking", "results/judges_baseline.json",
     lambda d: max(v["median_abs_rel_error"] for v in d["f0_tracking"].values() if v["honours_pitch"]),
     lambda x: f"≤ {math.ceil(100 * x)}%"),
    ("| F0 tracking", "results/judges_baseline.json",
     lambda d: sorted(v for v, f in d["f0_tracking"].items() if not f["honours_pitch"]),
     lambda v: f"{', '.join(v)} ignores pitch"),
    *[("| F0 tracking", "results/judges_baseline.json", ["f0_tracking", v, "spearman_measured_vs_requested"],
       v + " {:.2f}") for v in ("rms", "awb", "slt", "kal16")],
    ("| text tokens per second", "notebooks/01_data.ipynb",
     r"characters: ([\d.]+) tokens/s, BPE-1024: [\d.]+ tokens/s", "{} vs"),
    ("| text tokens per second", "notebooks/01_data.ipynb",
     r"characters: [\d.]+ tokens/s, BPE-1024: ([\d.]+) tokens/s", "vs {}"),
    ("| reference codec, test split, all", "results/codec.json", ["all_codebooks", "n_q"], "all {} codebooks"),
    ("| reference codec, test split, all", "results/codec.json", ["all_codebooks", "kbps"], "({:.1f} kbps)"),
    ("| reference codec, test split, all", "results/codec.json", ["all_codebooks", "wer"], "{:.1%} /"),
    ("| reference codec, test split, all", "results/codec.json", ["ground_truth_wer"], "/ {:.1%}"),
    ("| reference codec: SIM to the original", "results/codec.json", ["all_codebooks", "sim"], "{:.3f},"),
    ("| reference codec: SIM to the original", "results/codec.json", ["all_codebooks", "pesq"], "{:.2f},"),
    ("| reference codec: SIM to the original", "results/codec.json", ["all_codebooks", "stoi"], "{:.3f}"),
    ("| reference codec: encode + decode", "results/codec.json", ["all_codebooks", "threads"], "{} CPU threads"),
    ("| reference codec: encode + decode", "results/codec.json", ["all_codebooks", "rtf"], "{:.4f}"),
    ("| reference codec: encode + decode", "results/codec.json", lambda d: 1 / d["all_codebooks"]["rtf"],
     "({:.0f}x faster than real time)"),
    ("| reference codec, codebook 0 alone", "results/codec.json", ["1_codebooks", "kbps"], "({:.3f} kbps)"),
    ("| reference codec, codebook 0 alone", "results/codec.json", ["1_codebooks", "wer"], "{:.1%},"),
    ("| reference codec, codebook 0 alone", "results/codec.json", ["1_codebooks", "sim"], "{:.3f}"),
    ("| reference codec training", "checkpoints/codec_reference.json", ["steps"], "{:,} steps"),
    ("| reference codec training", "checkpoints/codec_reference.json", ["train", "batch"], "of {} x"),
    ("| reference codec training", "checkpoints/codec_reference.json", ["train", "crop_s"], "x {:.2f} s"),
    ("| reference codec training", "checkpoints/codec_reference.json",
     lambda d: threads(d["provenance"]["device"]), "{} CPU threads"),
    ("| reference codec training", "checkpoints/codec_reference.json", lambda d: d["wall_time_s"] / 60,
     "{:.0f} min"),
    *[("| frame-rate sweep", f"results/codec_sweep/{name}.json", key, fmt)
      for name in ("codec_reference", "codec_reference_25hz", "codec_reference_50hz")
      for key, fmt in ((["train", "minutes"], "{:.0f}-minute runs"), (["steps"], "{}"),
                       (lambda d: d["provenance"]["device"].split()[-1], "on an {}"),
                       (["config", "frame_rate"], "{:g}"), (["valid", "mel"], "{:.3f}"))],
    ("| parity with transformers'", "results/parity.json", ["max_abs_diff", "codebook0"], lambda x: f"≤ {up1(x)} /"),
    ("| parity with transformers'", "results/parity.json", ["max_abs_diff", "decoder"], lambda x: f"/ ≤ {up1(x)}"),
    ("| parity with transformers'", "tests/test_parity.py", r"(?m)^TOL = (\S+)", "test bound {}"),
    ("| parity with transformers'", "results/parity.json",
     lambda d: "identical" if d["greedy_codes_identical"] else "DIFFERENT", "greedy codes {}"),
    ("| parity with transformers'", "results/parity.json", ["greedy_frames_compared"], "for {} frames"),
    ("| parity with transformers'", "results/parity.json", lambda d: sorted(d["variants"]),
     lambda v: "plain and Llama-3 RoPE" if v == ["llama3_rope", "rope"] else "?"),
    ("| parameters, exact (meta device)", None, params("paper_422m"), "{:,} /"),
    ("| parameters, exact (meta device)", None, params("csm_1b"), "/ {:,}"),
    ("| KV cache, reference backbone", K, ["torch_threads"], "{} thread"),
    ("| KV cache, reference backbone", K, ["rows", -1, "context"], "at {:,} positions of context"),
    ("| KV cache, reference backbone", K, ["rows", -1, "no_cache_ms"], "{:.0f} /"),
    ("| KV cache, reference backbone", K, ["rows", -1, "cache_ms"], "/ {:.1f} ms"),
    ("| KV cache, reference backbone", K, ["rows", -1, "speedup_x"], "({:.0f}x)"),
    ("| KV cache, reference backbone", K, ["rows", 0, "speedup_x"], "{:.1f}x at"),
    ("| KV cache, reference backbone", K, ["rows", 0, "context"], "at {} positions |"),
    ("| conversation per backbone position", NB06, (FIT, lambda m: num(m[0][0])), "({:.0f} h corpus)"),
    ("| conversation per backbone position", NB06, (FIT, lambda m: num(m[0][1])), "{:.1f} +"),
    ("| conversation per backbone position", NB06, (FIT, lambda m: num(m[0][2])), "+ {:.1f} ="),
    ("| conversation per backbone position", NB06, (FIT, lambda m: num(m[0][3])), "= {:.1f} per s"),
    ("| conversation per backbone position", NB06, (FIT, lambda m: int(m[0][4])), "the {:,}-position window"),
    ("| conversation per backbone position", NB06, (FIT, lambda m: num(m[0][5])), "holds {:.0f} s"),
    ("| prefill of the reference backbone", "results/context_cost.json", ["rows", -1, "context_positions"],
     "{:,} positions of context"),
    ("| prefill of the reference backbone", "results/context_cost.json", ["rows", -1, "prefill_ms"], "{:.0f} ms vs"),
    ("| prefill of the reference backbone", "results/context_cost.json", ["rows", -1, "next_position_ms"],
     "vs {:.1f} ms"),
    ("| prefill of the reference backbone", "results/context_cost.json", ["torch_threads"], "({} threads)"),
    ("| compute amortization, reference CSM", "results/amortization.json", ["batch", "shape"],
     lambda s: f"batch ({s[0]}, {s[1]})"),
    ("| compute amortization, reference CSM", "results/amortization.json", ["settings", 1, "decoder_fraction"],
     lambda f: f"vs 1/{round(1 / f)}"),
    ("| compute amortization, reference CSM", "results/amortization.json", ["settings", 0, "saved_bytes"],
     lambda b: f"{b / 1e6:.1f} vs"),
    ("| compute amortization, reference CSM", "results/amortization.json", ["settings", 1, "saved_bytes"],
     lambda b: f"vs {b / 1e6:.1f} MB"),
    ("| compute amortization, reference CSM", "results/amortization.json",
     lambda d: d["settings"][1]["saved_bytes"] / d["settings"][0]["saved_bytes"], "({:.2f}x)"),
    ("| compute amortization, reference CSM", "results/amortization.json", ["timing", "speedup_median"],
     "{:.2f}x faster"),
    ("| compute amortization, reference CSM", "results/amortization.json", lambda d: threads(d["device"]),
     "({} thread)"),
    # the short run of chapter 05 (written by notebooks/05_audio_decoder.ipynb under make workbook)
    ("| amortization's effect", "results/amortization_loss.json", ["train", "steps"], "{} steps"),
    ("| amortization's effect", "results/amortization_loss.json", lambda d: list(d["final"]),
     lambda names: "fraction " + " / ".join(names)),
    *[("| amortization's effect", "results/amortization_loss.json", ["final", name, "valid_decoder_loss"],
       fmt) for name, fmt in (("1", "{:.3f} /"), ("1/4", "/ {:.3f} /"), ("1/16", "/ {:.3f} nats"))],
    ("| amortization's effect", "results/amortization_loss.json", ["unigram", "codebooks_1_7"],
     "unigram baseline ({:.3f})"),
    ("| amortization's effect", "results/amortization_loss.json",
     lambda d: all(f["valid_decoder_loss"] > d["unigram"]["codebooks_1_7"]
                   for f in d["final"].values()), lambda none: "none beats" if none else "?"),
    ("| amortization's effect", "results/amortization_loss.json",
     lambda d: statistics.pstdev(f["valid_c0_loss"] for f in d["final"].values()) < 0.02,
     lambda same: "(codebook-0 loss unchanged)" if same else "?"),
    ("| the training loop:", "tests/test_train.py", r"--nproc_per_node=(\d+)", "{}-rank gloo DDP"),
    ("| the training loop:", "tests/test_train.py", r'"--accum=(\d+)"', "{}-way accumulation"),
    ("| the training loop:", "tests/test_train.py", r"Same global batch of (\d+) windows", "one batch of {} windows"),
    ("| the training loop:", "tests/test_train.py", r"assert worst < (\S+),", "same weights to {}"),
    ("| the training loop:", "tests/test_train.py", r"approx\(a\[s\], rel=([^,]+),", "(rel. {})"),
    ("| one reference-CSM training step", "results/training_knobs.json", ["what"],
     lambda s: re.search(r"\d+ windows", s).group()),
    ("| one reference-CSM training step", "results/training_knobs.json", ["torch_threads"], "{} threads:"),
    ("| one reference-CSM training step", "results/training_knobs.json",
     lambda d: d["ms_per_step"]["bf16 autocast"] / d["ms_per_step"]["fp32"], "{:.2f}x /"),
    ("| one reference-CSM training step", "results/training_knobs.json",
     lambda d: d["ms_per_step"]["fp32 + checkpointing"] / d["ms_per_step"]["fp32"], "/ {:.2f}x the time"),
    ("| one reference-CSM training step", "notebooks/07_training.ipynb",
     r"activations saved for the backward pass: (\d+) MB plain", "kept: {} vs"),
    ("| one reference-CSM training step", "notebooks/07_training.ipynb",
     r"(\d+) MB with checkpointing", "vs {} MB with checkpointing"),
    # --- the WordNet corpus, the text-input comparison, the reference model (issue 11) ---
    ("| WordNet example sentences (Debian", NB01, r"([\d,]+) sentences after cleaning", "| {} /"),
    ("| WordNet example sentences (Debian", NB01, r"sentences after cleaning, ([\d,]+) distinct words", "/ {};"),
    ("| WordNet example sentences (Debian", REF, ["overlap_with_train", "train_words"], "; {:,};"),
    ("| WordNet example sentences (Debian", REF, ["overlap_with_train", "sentences_in_train"], "; {} |"),
    ("| what the backbone reads", TI, lambda d: d["models"]["phones"]["wall_time_s"] / 60, "{:.0f} min of training"),
    ("| what the backbone reads", TI, ["models", "phones", "test", "turns"], "on {} held-out"),
    *[("| what the backbone reads", TI, ["models", k, "evals", -1, "valid_c0_loss"], fmt)
      for k, fmt in (("bpe", "| {:.2f} /"), ("chars", "/ {:.2f} /"), ("phones", "/ {:.2f} nats"))],
    *[("| what the backbone reads", TI, ["models", k, "test", "with_context", "wer"], fmt)
      for k, fmt in (("bpe", "; {:.0%} /"), ("chars", "/ {:.0%} /"), ("phones", "/ {:.0%} (ground"))],
    ("| what the backbone reads", TI, ["models", "phones", "test", "ground_truth", "wer"], "(ground truth {:.0%})"),
    # --- the alignment study (make alignment-study, chapter 07 section 6.5) ---
    ("| alignment study:", STUDY, ["steps"], "for {} steps"),
    ("| alignment study:", STUDY, ["recipe", "hours"], "on the {:g} h corpus"),
    ("| alignment study:", STUDY, ["turns"], "on {} held-out turns"),
    ("| alignment study:", STUDY, ["arms", "base", "test", "with_context", "wer"], "| {:.1%};"),
    ("| alignment study:", STUDY, ["arms", "base", "test", "ground_truth", "wer"], "(ground truth {:.1%})"),
    *[("| alignment study:", STUDY, (lambda d, a=arm: d["arms"][a]), lambda a: (
        f"{a['test']['with_context']['wer']:.1%} ({pts(a['against_base']['wer_difference'])} "
        f"[{pts(a['against_base']['wer_difference_ci95'][0])}, {pts(a['against_base']['wer_difference_ci95'][1])}])"))
      for arm in ("phone", "ctc", "guided", "pair", "regroup")],
    ("| alignment study:", STUDY, lambda d: all(lo <= 0 <= hi for lo, hi in (
        a["against_base"]["wer_difference_ci95"] for a in d["arms"].values())),
     lambda none: "no arm moved WER beyond its interval" if none else "?"),
    ("| same study, whose voice", STUDY, ["recipe", "layout_turns"], "on {} held-out turns"),
    *[("| same study, whose voice", STUDY, (lambda d, a=arm: d["arms"][a]["test"]["layouts"]), lambda lay: (
        f"{lay['corpus']['sim']:.3f} / {lay['own_last']['sim']:.3f} / {lay['own_only']['sim']:.3f}"))
      for arm in ("base", "regroup")],
    ("| same study, attention", STUDY, lambda d: [max(layer) for layer in d["reference"]["attention"]["by_layer_head"]],
     lambda m: "| " + " / ".join(f"{x:.2f}" for x in m) + ";"),
    ("| same study, attention", STUDY, lambda d: max(d["arms"]["guided"]["attention"]["by_layer_head"][1]),
     "; {:.2f} |"),
    ("| same study, attention", "csm_lib/train.py", r"guided_layer: int = (\d+)", "layer {} after"),
    ("| reference CSM (", "checkpoints/csm_reference.json", ["parameters", "total"],
     lambda n: f"({n / 1e6:.1f} M parameters"),
    ("| reference CSM (", REF, ["turns"], "({} turns)"),
    ("| reference CSM (", REF, ["with_context", "wer"], "| {:.1%} ["),
    ("| reference CSM (", REF, ["with_context", "wer_ci95"], lambda c: f"[{c[0]:.1%}–{c[1]:.1%}]"),
    ("| reference CSM (", REF, ["ground_truth", "wer"], "(ground truth {:.1%})"),
    ("| reference CSM (", REF, ["with_context", "sim"], "/ {:.3f} ["),
    ("| reference CSM (", REF, ["with_context", "sim_ci95"], lambda c: f"[{c[0]:.3f}–{c[1]:.3f}]"),
    ("| reference CSM (", REF, ["model_steps"], "phones, {:,} steps)"),
    ("| reference CSM (", REF, ["settings", "temperature"], "temperature {}:"),
    ("| sampling temperature for", SWEEP, ["turns"], "chosen on {} validation turns"),
    ("| sampling temperature for", SWEEP, lambda d: " / ".join(d["temperatures"]), "WER at {} (top-k"),
    ("| sampling temperature for", SWEEP, ["topk"], "(top-k {})"),
    ("| sampling temperature for", SWEEP, lambda d: " / ".join(f"{r['wer']:.1%}" for r in d["temperatures"].values()),
     "| {} (ground"),
    ("| sampling temperature for", SWEEP, ["ground_truth", "wer"], "(ground truth {:.1%})"),
    ("| sampling temperature for", SWEEP, ["chosen"], "): {} chosen"),
    ("| sampling temperature for", SWEEP, lambda d: "every interval overlaps the others" if all(
        a[0] <= b[1] for a in (r["wer_ci95"] for r in d["temperatures"].values())
        for b in (r["wer_ci95"] for r in d["temperatures"].values())) else "some intervals do not overlap", "{}"),
    ("| sampling temperature for", SWEEP, lambda d: "every turn ended by itself" if all(
        r["ended_by_eos"] == 1 for r in d["temperatures"].values()) else "not every turn ended", "{}"),
    ("| reference CSM (", REF, ["with_context", "style_error"], "/ {:.2f} /"),
    ("| reference CSM (", REF, ["with_context", "ended_by_eos"], "/ {:.0%} /"),
    ("| reference CSM (", REF, ["with_context", "duration_ratio_median"], "/ {:.2f} |"),
    ("| same, **without context**", REF, ["without_context", "wer"], "{:.1%} /"),
    ("| same, **without context**", REF, ["without_context", "sim"], "/ {:.3f} /"),
    ("| same, **without context**", REF, ["without_context", "style_error"], "/ {:.2f} ("),
    ("| same, **without context**", REF, ["ground_truth", "style_error"], "style error {:.2f})"),
    ("| same, unseen-word split", REF, ["unseen_words", "turns"], "({} turns)"),
    ("| same, unseen-word split", REF, ["unseen_words", "with_context", "wer"], "| {:.1%} ["),
    ("| same, unseen-word split", REF, ["unseen_words", "with_context", "wer_ci95"],
     lambda c: f"[{c[0]:.1%}–{c[1]:.1%}]"),
    ("| same, unseen-word split", REF, ["unseen_words", "ground_truth", "wer"], "(ground truth {:.1%})"),
    ("| reference CSM training so far", CK, ["steps"], "{:,} of"),
    ("| reference CSM training so far", CK, ["train", "steps"], "of {:,} steps"),
    ("| reference CSM training so far", CK, ["train", "batch"], "of {} windows"),
    ("| reference CSM training so far", CK, ["data", "train_hours"], "model: {:.1f} h train)"),
    ("| reference CSM training so far", CK_6000, ["steps"], "stage 1: {:,} steps on the"),
    ("| reference CSM training so far", CK_6000, ["train", "hours"], "on the {:.0f} h corpus,"),
    ("| reference CSM training so far", CK, ["train", "hours"], "stage 2 on the {:.0f} h corpus"),
    ("| reference CSM training so far", CK, ["train", "init"],
     lambda p: "from stage 1's model" if p.endswith("csm_reference.safetensors") else "?"),
    ("| reference CSM training so far", CK, ["train", "threads"], lambda n: "two CPU threads" if n == 2 else "?"),
    ("| reference CSM training so far", CK, lambda d: total_seconds(d["history"]) / 60, "| {:.0f} min;"),
    ("| reference CSM training so far", CK, ["valid", "valid_c0_loss"], "loss {:.2f} nats"),
    ("| reference CSM training so far", CK, lambda d: math.log(d["config"]["audio_vocab_size"]), "(chance {:.2f})"),
    ("| the reference's two stages on the same", STAGES, ["windows"], "(the first {} of each split"),
    ("| the reference's two stages on the same", CK_6000, ["steps"], "stage 1 (step {:,},"),
    ("| the reference's two stages on the same", CK, ["steps"], "stage 2 (step {:,},"),
    ("| the reference's two stages on the same", STAGES, stage_loss(1, 20, "train"), "| {:.2f} /"),
    ("| the reference's two stages on the same", STAGES, stage_loss(2, 20, "train"), "/ {:.2f};"),
    ("| the reference's two stages on the same", STAGES, stage_loss(1, 20, "valid"), "; {:.2f} /"),
    ("| the reference's two stages on the same", STAGES, stage_loss(2, 20, "valid"), "/ {:.2f} nats"),
    ("| the reference's two stages on the same", STAGES, lambda d: [m["measured_with"]["fingerprint"]
                                                                    for m in d["models"].values()],
     lambda f: "stage 2 (step" if f == [_load(REF_6000)["measured_with"]["fingerprint"],
                                        fingerprint(ROOT / CK.replace(".json", ".safetensors"))] else "?"),
    ("| the reference at the end of stage 1", CK_6000, ["steps"], "stage 1 (step {:,},"),
    ("| the reference at the end of stage 1", CK_6000, ["train", "hours"], "{:.0f} h corpus)"),
    ("| the reference at the end of stage 1", REF_6000, ["turns"], "the same {} held-out"),
    ("| the reference at the end of stage 1", REF_6000, ["settings", "temperature"], "temperature {}:"),
    ("| the reference at the end of stage 1", REF_6000, ["with_context", "wer"], "| {:.1%} ["),
    ("| the reference at the end of stage 1", REF_6000, ["with_context", "wer_ci95"],
     lambda c: f"[{c[0]:.1%}–{c[1]:.1%}]"),
    ("| the reference at the end of stage 1", REF_6000, ["with_context", "sim"], "/ {:.3f};"),
    ("| the reference at the end of stage 1", REF_6000, ["unseen_words", "with_context", "wer"], "; {:.1%};"),
    ("| the reference at the end of stage 1", REF_6000, ["without_context", "wer"], "; {:.1%} |"),
    ("**The reference model now reads sentences", OLD, ["with_context", "wer"], "scored {:.1%} WER"),
    ("**The reference model now reads sentences", "results/reference_model_3736.json", ["with_context", "wer"],
     "from {:.1%} at step"),
    ("**The reference model now reads sentences", "results/reference_model_3736.json", ["model_steps"],
     "at step {:,} (temperature"),
    ("**The reference model now reads sentences", "results/reference_model_3736.json", ["settings", "temperature"],
     "(temperature {},"),
    ("**The reference model now reads sentences", REF, ["with_context", "wer"], "WER {:.1%} ["),
    ("**The reference model now reads sentences", REF, ["model_steps"], "at step\n{:,} (temperature"),
    ("**The reference model now reads sentences", REF, ["settings", "temperature"], "(temperature {}, chosen"),
    ("**The reference model now reads sentences", CK_6000, ["train", "steps"], "(the whole\n{:,}-step schedule"),
    ("**The reference model now reads sentences", CK_6000, ["train", "hours"], "on the {:.0f} h corpus, three"),
    ("**The reference model now reads sentences", REF_6000, ["with_context", "wer"], "to {:.1%} at step 6,000"),
    ("**The reference model now reads sentences", REF_6000, ["model_steps"], "at step {:,} (temperature\n"),
    ("**The reference model now reads sentences", STAGES, stage_loss(1, 20, "train"), "was {:.2f} nats on training"),
    ("**The reference model now reads sentences", STAGES, stage_loss(1, 20, "valid"), "turns and {:.2f} on\nheld-out"),
    ("**The reference model now reads sentences", CK, ["train", "hours"], "gave it the {:.0f} h corpus"),
    ("**The reference model now reads sentences", CK, lambda d: d["steps"] - _load(CK_6000)["steps"],
     "for {:,} more steps"),
    ("**The reference model now reads sentences", STAGES, stage_loss(2, 20, "valid"), "held-out loss\n{:.2f}"),
    ("**The reference model now reads sentences", REF, ["with_context", "wer_ci95"],
     lambda c: f"[{c[0]:.1%}–{c[1]:.1%}] at step"),
    ("**The reference model now reads sentences", REF, ["ground_truth", "wer"], "(ground truth {:.1%}). The loss"),
    ("**The reference model now reads sentences", REF_6000, ["unseen_words", "with_context", "wer"], "({:.1%} then,"),
    ("**The reference model now reads sentences", REF, ["unseen_words", "with_context", "wer"], "then, {:.1%} now"),
    ("**The reference model now reads sentences", REF, lambda d: d["ground_truth"]["wer"] + 0.10,
     "(within 10 points: {:.1%} here) is not"),
    ("**The reference model now reads sentences", REF,
     lambda d: d["with_context"]["wer"] <= d["ground_truth"]["wer"] + 0.1, lambda met: "is not." if not met else "?"),
    ("**The reference model now reads sentences", "results/reference_model_probe.json",
     lambda d: d["train_text_scrambled"]["frames_10_29"] - d["train"]["frames_10_29"], "costs it {:.1f} nats"),
    ("| the template-corpus reference", FORTY, ["train", "hours"], "({:.0f} h,"),
    ("| the template-corpus reference", FORTY, ["train", "corpus_seed"], "seed {},"),
    ("| the template-corpus reference", FORTY, ["steps"], "{:,} steps"),
    ("| the template-corpus reference", FORTY, lambda d: d["wall_time_s"] / 60, "{:.0f} min)"),
    ("| the template-corpus reference", OLD, ["turns"], "({} turns)"),
    ("| the template-corpus reference", OLD, ["with_context", "wer"], "| {:.1%} ("),
    ("| the template-corpus reference", OLD, ["ground_truth", "wer"], "(ground truth {:.1%})"),
    ("| the template-corpus reference", OLD, ["with_context", "sim"], "/ {:.3f} /"),
    ("| the template-corpus reference", OLD, ["with_context", "style_error"], "/ {:.2f} |"),
    ("| the previous reference (5 h corpus", "results/reference_5h_model.json", ["train", "hours"],
     "({:.0f} h corpus"),
    ("| the previous reference (5 h corpus", "results/reference_5h_model.json", ["steps"], "{:,} steps"),
    ("| the previous reference (5 h corpus", "results/reference_5h_model.json", lambda d: d["wall_time_s"] / 60,
     "{:.0f} min"),
    ("| the previous reference (5 h corpus", "results/reference_5h_model.json",
     lambda d: threads(d["provenance"]["device"]), lambda n: "on one core" if n == 1 else "?"),
    ("| the previous reference (5 h corpus", "results/reference_model_5h_on_40h_test.json", ["turns"],
     "the same {} turns"),
    *[("| the previous reference (5 h corpus", "results/reference_model_5h_on_40h_test.json", [part, key], fmt)
      for part, end in (("with_context", ";"), ("without_context", " |"))
      for key, fmt in (("wer", "{:.1%} /"), ("sim", "/ {:.3f} /"), ("style_error", "/ {:.2f}" + end))],
    ("| the first attempt without", "results/reference_attempt1_probe.json",
     lambda d: next(k for k in d["train"] if k.endswith("_on")).split("_")[1], "after {} frames"),
    ("| the first attempt without", "results/reference_attempt1_probe.json", ["train", "frames_30_on"], "{:.2f} vs"),
    ("| the first attempt without", "results/reference_attempt1_probe.json", ["valid", "frames_30_on"],
     "vs {:.2f} nats"),
    ("| activation model (`budget.py`)", "tests/test_budget.py", r"approx\(model, rel=([\d.]+)\)",
     lambda s: f"within {float(s):.0%}"),
    ("| `paper_422m` peak training memory", GPU, lambda d: len(d["grid"]), "{} configurations"),
    ("| `paper_422m` peak training memory", GPU, lambda d: sorted({r["micro_batch"] for r in d["grid"]}),
     lambda b: f"micro-batch {b[0]}–{b[-1]}"),
    ("| `paper_422m` peak training memory", GPU, lambda d: min(RATIO(d)), "{:.2f}–"),
    ("| `paper_422m` peak training memory", GPU, lambda d: max(RATIO(d)), "–{:.2f}"),
    ("| `paper_422m` peak training memory", GPU, lambda d: min(RATIO(d)),
     lambda r: f"never more than {math.ceil(100 * (1 - r))}% under"),
    # --- Seed claims: status -----------------------------------------------------------------------------------
    ("| first codebooks carry", "checkpoints/codec_reference.json", ["config"],
     lambda c: f"Mimi's {c['n_semantic']} + {c['n_q'] - c['n_semantic']} split"),
    ("| first codebooks carry", "checkpoints/codec_reference.json", ["config"],
     lambda c: f"acoustic codebooks {c['n_semantic']}–{c['n_q'] - 1}"),
    ("| first codebooks carry", "notebooks/03_codec.ipynb", r"sim_hybrid_to_b\s+([\d.]+)",
     lambda s: f"({num(s):.2f} vs"),
    ("| first codebooks carry", "notebooks/03_codec.ipynb", r"sim_hybrid_to_a\s+([\d.]+)",
     lambda s: f"vs {num(s):.2f} to A"),
    ("| first codebooks carry", "notebooks/03_codec.ipynb", (SWAP, lambda m: m[0]),
     lambda m: f"in {round(num(m[0]) * num(m[1]))} of {round(num(m[1]))} pairs"),
    ("| first codebooks carry", "notebooks/03_codec.ipynb", r"wer_hybrid_vs_recon_a_transcript\s+([\d.]+)",
     lambda s: f"({num(s):.1%} WER"),
    ("| first codebooks carry", "results/codec.json", ["1_codebooks", "sim"], "(SIM {:.2f} to the original)"),
    ("| cross-modal attention, dual memory", NB06, r"memory bank at the reference width: [\d,]+ parameters, "
     r"([\d,]+) floats", "constant {} floats"),
    ("| cross-modal attention, dual memory", NB06, (BANK, lambda m: int(m[0][1])), "({}x less"),
    ("| cross-modal attention, dual memory", NB06, (BANK, lambda m: int(m[0][0])), "after a {}-turn conversation"),
    ("| cross-modal attention, dual memory", NB06, r"memory bank at the reference width: ([\d,]+) parameters",
     lambda s: f"for {num(s) / 1e6:.2f} M parameters"),
    ("| cross-modal attention, dual memory", NB06, (XCOST, lambda m: statistics.median(map(num, m))),
     "saves {:.0%} of"),
    ("| cross-modal attention, dual memory", None, lambda: __import__("csm_lib.seed_variants").seed_variants
     .CrossModalConfig().pool, "at pool {},"),
    ("| a 422M model", None, params("paper_422m"), lambda n: f"has {n / 1e6:.1f}M parameters"),
    *[("| a 422M model", None, params("paper_422m", part), lambda n, part=part: f"{part} {n / 1e6:.1f}M")
      for part in ("backbone", "decoder", "embeddings", "heads")],
    ("| a 422M model", None, llama_stack_params,
     lambda n: f"a {SEED_STACK['dim']}-wide, {SEED_STACK['layers']}-layer stack of our Llama blocks with a "
               f"{SEED_STACK['hidden']:,}-wide MLP has {n / 1e6:.1f}M parameters"),
    ("| ... trained on an 8 GB GPU", GPU, ["cap_bytes"], lambda b: f"under a {b / 1e9:.1f} GB allocator cap"),
    ("| ... trained on an 8 GB GPU", GPU,
     lambda d: (next(r for r in d["capped"] if r["fits"]), d["positions_per_window"]),
     lambda rp: f"{rp[0]['micro_batch'] * rp[0]['accum']} windows of {rp[1]} positions in {rp[0]['accum']} "
                f"micro-batches of {rp[0]['micro_batch']} train with a peak of {rp[0]['max_allocated_gb']:.2f} GB"),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: [r["amp"] for r in d["capped"] if r["fits"]],
     lambda a: " or ".join(a)),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: grid_gb(d, False, None, min),
     "every configuration peaks at {:.2f} GB or more"),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: (grid_gb(d, False, True, min), grid_gb(d, False, True, max)),
     lambda r: f"({r[0]:.2f}–{r[1]:.2f} GB with checkpointing"),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: (grid_gb(d, False, False, min), grid_gb(d, False, False, max)),
     lambda r: f"{r[0]:.2f}–{r[1]:.2f} GB without"),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: [r["fits"] for r in d["capped"] if not r["fused_adam"]],
     lambda f: "the capped run runs out of memory" if f == [False] else "?"),
    ("| ... trained on an 8 GB GPU", GPU,
     lambda d: sum(d["grid"][0]["estimate_parts_gb"][k] for k in ("weights", "gradients", "optimizer")),
     "AdamW moments are {:.1f} GB"),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: next(r for r in d["capped"] if r["fits"])["positions_per_s"],
     "{:,.0f} positions/s on the H200"),
    ("| ... trained on an 8 GB GPU", GPU, lambda d: max(d["grid"], key=lambda r: r["positions_per_s"]),
     lambda r: f"({r['positions_per_s']:,.0f} at micro-batch {r['micro_batch']} "
               f"{'without' if not r['checkpointing'] else 'with'} checkpointing)"),
    ("| \"mixed precision training is essential\"", "results/training_knobs.json",
     lambda d: d["ms_per_step"]["bf16 autocast"] / d["ms_per_step"]["fp32"], "takes {:.2f}x the time of fp32"),
    ("| KV cache |", K, ["rows", -1, "speedup_x"], "{:.0f}x per generated position"),
    ("| KV cache |", K, ["rows", -1, "context"], "at {:,} positions of context"),
    # --- prose ---------------------------------------------------------------------------------------------------
    ("The test split is small", "results/judges_baseline.json", ["n_turns"], "({} turns,"),
    ("The test split is small", "results/judges_baseline.json",
     lambda d: sorted(v["n"] for v in d["f0_tracking"].values()), lambda n: f"{n[0]}–{n[-1]} per voice"),
    ("the corpus cache (not committed", "results/corpus_build.json", ["build_seconds"], "rebuilt in ~{:.0f} s"),
    ("the corpus cache (not committed", "results/corpus_reference_build.json", lambda d: d["build_seconds"] / 60,
     "the reference's in ~{:.0f} min"),
    ("Splits are by conversation", "results/corpus_build.json", ["config", "split_fractions"],
     lambda f: "/".join(f"{100 * x:.0f}" for x in f)),
    ("installs the pinned dependencies", "pyproject.toml", r'"torch==([\d.]+)"', "torch {}"),
    ("installs the pinned dependencies", "pyproject.toml", r'"torchaudio==([\d.]+)"', "torchaudio {}"),
    (".venv/bin/hf download sesame/csm-1b", None, params("csm_1b"), lambda n: f"about {4 * n / 1e9:.0f} GB"),
    ("The converted model speaks Mimi codes", None, lambda: __import__("csm_lib.model").model.PRESETS["csm_1b"],
     lambda c: f"{c.n_codebooks} codebooks of {c.audio_vocab_size:,}"),
]

# Numbers in the two tables that are not measurements, removed before the coverage check. Keep it short.
ALLOWED = [
    (r"`[^`]*`", "code: commands, paths, preset and argument names"),
    (r"§\s?\d+", "section numbers"),
    (r"\bchapters? \d\d(?:, \d\d)*", "chapter numbers"),
    (r"(?i)\bcodebook 0\b", "the first codebook's index"),
    (r"180 ms end-to-end vs pipeline 850 / AudioLM 1200 / VALL-E 950 ms", "the seed's latency claims, quoted"),
    (r"\b422M\b|an 8 GB GPU|the seed's 8 \+ 8", "the seed's claims, quoted"),
    (r'"0\.89 naturalness"', "the seed's claim, quoted"),
    (r"requested − 1\\\|", "the 1 of a formula"),
    (r"\b95% CI\b", "the level of an interval"),
    (r'"3\.5 ms inference \(GPU\)"|"2-3x speed-up for common phrases"|"2x inference speed-up',
     "the seed's claims, quoted"),
    (r"RTX 4090|in bf16|422M parameters", "a device's and a precision's names"),
    (r'"sub-200 ms responses"|Sesame\'s 1B model', "the seed's claim, quoted; the model it is about"),
]

NUMBER = re.compile(r"(?<![A-Za-z_\d.,])(?<![A-Za-z]-)(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e-?\d+)?(?!\d)")


@cache
def readme() -> str:
    return README.read_text()


def units() -> list[str]:
    """Every table row (one line) and every prose paragraph (lines joined) of the README."""
    out, para = [], []
    for line in readme().splitlines() + [""]:
        if line.startswith("|"):
            out.append(line)
        elif line.strip():
            para.append(line)
            continue
        if para:
            out.append("\n".join(para))
            para = []
    return out


def unit(label: str) -> str:
    found = [u for u in units() if label in u]
    assert len(found) == 1, f"README label {label!r} matches {len(found)} rows/paragraphs, not one"
    return found[0]


def table_rows(heading: str) -> list[str]:
    """The data rows of the table under ``heading``."""
    section = readme().split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return rows[2:]  # skip the header and |---| lines


def notebook_outputs(path: Path) -> str:
    text = []
    for cell in json.loads(path.read_text())["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                text.append("".join(out["text"]))
            elif "text/plain" in out.get("data", {}):
                text.append("".join(out["data"]["text/plain"]))
    return "\n".join(text)


def measured_with(result: str) -> str:
    """The checkpoint JSON of the reference CSM that ``result`` was measured with: the current one when
    the result records its fingerprint, the step-3,736 one for results made before that record existed."""
    record = _load(result).get("measured_with")
    made = record["fingerprint"] if record else THE_3736  # results made before the record: all at step 3,736
    if made == fingerprint(ROOT / CK.replace(".json", ".safetensors")):
        return CK
    assert made == THE_3736, f"{result} was measured with a reference that is neither the current one nor " \
        f"step 3,736: {record}"
    return CK_3736


THE_3736 = "315d7bbca068"  # sha256[:12] of checkpoints/csm_reference.safetensors at step 3,736


def test_readme_names_the_results_an_earlier_reference_measured():
    behind = {r for r in REFERENCE_RESULTS if measured_with(r) != CK}
    said = readme().split("**Measured with the reference at step", 1)
    named = set(re.findall(r"`(results/\w+\.json)`", said[1].split("\n\n", 1)[0])) if len(said) > 1 else set()
    named &= set(REFERENCE_RESULTS)  # the paragraph also names the old checkpoint's JSON
    assert named == behind, f"the README should name exactly these results as behind the reference: {sorted(behind)}"
    if behind:
        assert f"**Measured with the reference at step {_load(CK_3736)['steps']:,}" in readme()


def test_the_reference_is_judged_on_sentences_its_own_training_never_read():
    """``results/reference_model.json`` counts its overlap against the corpus the current reference was trained
    on (stage 2 of ``make model`` trains on a larger corpus than the one whose test turns it is judged on)."""
    ref, ck = _load(REF), _load(CK)
    assert ref["measured_with"]["fingerprint"] == fingerprint(ROOT / CK.replace(".json", ".safetensors"))
    for judged in (ref, ref["unseen_words"]):
        assert judged["train_corpus"] == ck["data"]["corpus"]
        assert judged["overlap_with_train"]["sentences_in_train"] == 0
        assert judged["overlap_with_train"]["turns_in_train"] == 0


@cache
def _load(file: str):
    path = ROOT / file
    if file.endswith(".json"):
        return json.loads(path.read_text())
    if file.endswith(".ipynb"):
        return notebook_outputs(path)
    return path.read_text()


def value(file: str | None, key):
    if file is None:
        return key()
    data = _load(file)
    if file.endswith(".json"):
        if callable(key):
            return key(data)
        for k in key:
            data = data[k]
        return data
    regex, then = key if isinstance(key, tuple) else (key, None)
    found = re.findall(regex, data)
    if then is not None:
        assert found, f"{file}: no match for {regex!r}"
        return then(found)
    assert len(found) == 1, f"{file}: {regex!r} matched {len(found)} times, not once"
    return found[0]


def expected(entry) -> str:
    _, file, key, fmt = entry
    v = value(file, key)
    return fmt(v) if callable(fmt) else fmt.format(v)


def appears(text: str, where: str) -> bool:
    """``text`` in ``where``, not as part of a longer number (and across the line breaks of a paragraph)."""
    pattern = r"\s+".join(re.escape(part) for part in text.split())
    before = r"(?<![\d.,])" if text[0].isdigit() else ""
    after = r"(?!\d|[.,]\d)" if text[-1].isdigit() else ""
    return re.search(before + pattern + after, where) is not None


def entry_id(entry) -> str:
    label, file, key, _ = entry
    what = key if isinstance(key, str) else "/".join(map(str, key)) if isinstance(key, list) else "derived"
    return f"{label.strip('| ')[:28]}|{file}|{what}"[:90]


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry_id(e) for e in ENTRIES])
def test_readme_quotes_the_source(entry):
    label, file = entry[:2]
    text, row = expected(entry), unit(label)
    assert appears(text, row), f"README row {label!r} should say {text!r} (from {file or 'an exact count'}):\n{row}"


@pytest.mark.parametrize("heading", TABLES)
def test_every_number_in_the_tables_is_checked(heading):
    checked: dict[str, set[str]] = {}
    broken = set()  # rows with an entry whose source cannot be read: test_readme_quotes_the_source reports them
    for entry in ENTRIES:
        try:
            checked.setdefault(unit(entry[0]), set()).update(NUMBER.findall(expected(entry)))
        except (LookupError, AssertionError, TypeError, ValueError, OSError):
            broken.add(unit(entry[0]))
    rows = table_rows(heading)
    assert rows, heading
    unchecked = []
    for row in rows:
        if row in broken:
            continue
        cells = row.strip("|").split(" | ")
        text = " | ".join(cells[:2])  # what + value (or claim + status); the command column names commands
        for pattern, _ in ALLOWED:
            text = re.sub(pattern, " ", text)
        extra = [n for n in NUMBER.findall(text) if n not in checked.get(row, set())]
        if extra:
            unchecked.append(f"{extra} in {row[:80]}…")
    assert not unchecked, "numbers without an entry in ENTRIES (or ALLOWED):\n" + "\n".join(unchecked)


def test_up1_rounds_up():
    assert [up1(x) for x in (4.768e-7, 4.47e-8, 8.94e-8, 3e-8, 9.6e-5, 1e-4, 0.0)] == \
        ["5e-7", "5e-8", "9e-8", "3e-8", "1e-4", "1e-4", "0"]
    for x in (1.234e-7, 9.99e-9, 2.98e-8):
        assert float(up1(x)) >= x


def test_chapter_07_says_what_the_reference_measured():
    """Chapter 07's "What we measured" quotes the reference's numbers: they are kept equal to the results."""
    nb = json.loads((ROOT / "notebooks/07_training.ipynb").read_text())
    box = next("".join(c["source"]) for c in nb["cells"] if "".join(c["source"]).startswith("## What we measured"))
    bullet = box.split("* the reference model on real sentences", 1)[1].split("\n* ", 1)[0]
    ref, old, stages = _load(REF), _load(REF_6000), _load(STAGES)
    w, u = ref["with_context"], ref["unseen_words"]["with_context"]
    said = [f"WER {old['with_context']['wer']:.1%}", f"{stage_loss(1, 20, 'train')(stages):.2f} nats",
            f"against {stage_loss(1, 20, 'valid')(stages):.2f}",
            f"held-out loss {stage_loss(2, 20, 'valid')(stages):.2f}",
            f"temperature {ref['settings']['temperature']}", f"WER {w['wer']:.1%} [{w['wer_ci95'][0]:.1%}"[:-1],
            f"{u['wer']:.1%} [", f"SIM {w['sim']:.3f}", f"against {ref['without_context']['sim']:.3f}",
            f"style error {w['style_error']:.2f}", f"against {ref['without_context']['style_error']:.2f}",
            f"{w['duration_ratio_median']:.2f} times", f"WER is {ref['without_context']['wer']:.1%}",
            f"{ref['unseen_words']['ground_truth']['wer']:.1%};",
            f"{old['unseen_words']['with_context']['wer']:.1%} at"]
    text = " ".join(bullet.split())
    missing = [s for s in said if s not in text]
    assert not missing, f"chapter 07's bullet should say {missing}"
