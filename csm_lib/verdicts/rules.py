"""The vocabulary and the rules every family of claims is judged with: the four verdicts and four kinds of evidence
(each typed here once), every threshold, the seed's numbers the rules use, the committed files that hold ours
(``results/*.json``, ``checkpoints/*.json``, two notebooks), ``Claim`` (one judged claim), ``Results`` (those files,
each read once) and the small functions that turn numbers into a verdict or a phrase.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Claim:
    """One seed claim and what this repository shows about it."""

    key: str  # its name in ORDER (__init__.py)
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
