"""The README's "Seed claims: status" table: every claim in the seed's order (``ORDER``), each judged by its family's
module, beside the claims no rule judges (``UNADDRESSED``); ``markdown`` formats it, ``for_chapter`` gives a
chapter its rows, ``main`` is the command (``python -m csm_lib.verdicts``). Every constant, rule and type of
``rules.py`` is also reachable from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from csm_lib.verdicts.architecture import architecture_claims
from csm_lib.verdicts.inference import inference_claims
from csm_lib.verdicts.latency import latency_claims
from csm_lib.verdicts.quality import quality_claims
from csm_lib.verdicts.rules import *  # noqa: F403  table.X: every constant, rule and type of rules.py
from csm_lib.verdicts.rules import NOT_ADDRESSED, NOT_MEASURED, NOT_TESTABLE, SCORES, Claim, Results
from csm_lib.verdicts.serving import serving_claims
from csm_lib.verdicts.training import training_claims

ORDER = ("stages", "context", "robotic", "architecture", "rvq", "cross_modal", "memory", "params", "gpu_8gb",
         "gpu_ms", "end_to_end", "naturalness", "amp", "accumulation", "empty_cache", "latency", "ordering",
         "gain_csm", "gain_audiolm", "gain_valle", *SCORES, "windows", "interpolate", "chunked", "serving",
         "kv_cache", "speculative", "flash", "int8_speed", "int8_quality", "chunks", "chunks_20ms", "video",
         "personal", "available")

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


def for_chapter(chapter: str, root: Path | str = "..") -> str:
    """The rows of the claims a chapter explains (``Claim.chapter`` names it), formatted as in the README: what a
    chapter displays instead of typing a verdict (``root``: the repository, ``..`` from ``notebooks/``)."""
    rows = [c for c in claims(root) if chapter in (s.strip() for s in c.chapter.split(","))]
    if not rows:
        raise ValueError(f"no seed claim names chapter {chapter!r}")
    return markdown(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m csm_lib.verdicts", description="The seed's claims, judged.")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.add_argument("--root", default=".", help="the repository (results/, checkpoints/, notebooks/)")
    a = p.parse_args(argv)
    rows = claims(a.root)
    print(markdown(rows) if a.markdown else "\n".join(f"{c.verdict:<18} {c.evidence:<30} {c.claim}" for c in rows))
