"""Every result that depends on the shipped reference, re-measured in order by one command: ``make results``.

    python -m csm_lib.bench.results            # run what is stale, skip what is fresh
    python -m csm_lib.bench.results --list     # only say what is fresh and what is stale, and how long the rest takes

A result belongs to a model: each file below records ``measured_with`` (``checkpoint.model_record``: the
checkpoint's path, steps and content fingerprint). A step is **fresh** when every file it writes exists and
records the fingerprint of the shipped ``checkpoints/csm_reference.safetensors``; it is then skipped, so an
interrupted run resumes where it stopped. The seed variants (chapter 10's memory bank and cross-modal
attention, trained *from* the reference) are fresh when their sidecars record the shipped reference as the
model they started from (``init_from``, written by ``train.py``) and its steps + ``VARIANT_STEPS``; stale
ones are deleted before ``make seed-variants`` rebuilds them.

``STEPS`` is the order (model-eval first: it chooses the temperature the generator then uses) with each
step's make target, the files it writes and its measured time on 2 cores. ``tests/test_results.py`` checks
that every committed file of these steps is fresh, or is listed there as stale with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from csm_lib import checkpoint
from csm_lib.outputs import REPO

REFERENCE = REPO / "checkpoints" / "csm_reference.safetensors"
VARIANTS = ("plain", "memory", "cross_modal")
VARIANT_STEPS = 300  # the Makefile's VARIANT_STEPS


@dataclass(frozen=True)
class Step:
    target: str  # the make target
    files: tuple[str, ...]  # what it writes under results/ (or checkpoints/ for the seed variants)
    minutes: float  # measured on 2 cores (the stage-4 reference's run; seed-variants and bench-quality earlier)


STEPS = (
    Step("model-eval", ("temperature_sweep.json", "reference_model.json", "reference_model_probe.json"), 31),
    Step("bench-inference", ("inference.json",), 6),
    Step("bench-latency", ("latency_table.json",), 5),
    Step("bench-loop", ("voice_loop.json",), 16),
    Step("seed-variants", tuple(f"csm_{v}.safetensors" for v in VARIANTS), 30),
    Step("bench-quality", ("quality_table.json",), 90),
    Step("bench-pronunciation", ("pronunciation.json",), 2),
    Step("bench-serve", ("serving.json",), 2),
    Step("bench-finetune", ("finetune.json",), 30),
)


def where(step: Step, name: str) -> Path:
    return REPO / ("checkpoints" if step.target == "seed-variants" else "results") / name


def why_stale(step: Step, reference: Path = REFERENCE) -> str | None:
    """None when the step is fresh (module docstring), else what makes it stale."""
    shipped = checkpoint.load_meta(reference)
    fp = checkpoint.fingerprint(reference)
    for name in step.files:
        path = where(step, name)
        if not path.exists():
            return f"{path.relative_to(REPO)} is missing"
        if step.target == "seed-variants":  # trained from the reference: its sidecar names the model it started from
            meta = checkpoint.load_meta(path)
            start = (meta.get("init_from") or {}).get("fingerprint")
            if start != fp or meta.get("steps") != shipped["steps"] + VARIANT_STEPS:
                return (f"{path.relative_to(REPO)} was trained from {start or 'a model it does not record'} to step "
                        f"{meta.get('steps')}, not from the shipped reference ({fp}, step {shipped['steps']}) + "
                        f"{VARIANT_STEPS}")
            continue
        record = json.loads(path.read_text()).get("measured_with") or {}
        if record.get("fingerprint") != fp:
            return (f"{path.relative_to(REPO)} was measured with {record.get('fingerprint', 'no recorded model')} "
                    f"(step {record.get('steps', '?')}), the shipped reference is {fp} (step {shipped['steps']})")
    return None


def run(steps: tuple[Step, ...] = STEPS, dry: bool = False) -> list[str]:
    """Run every stale step in order (``dry``: only report); returns the targets run (or to run)."""
    stale = {s.target: why_stale(s) for s in steps}
    todo = [s for s in steps if stale[s.target]]
    left = sum(s.minutes for s in todo)
    print(f"{len(steps) - len(todo)} of {len(steps)} steps fresh; about {left:.0f} min of work left on 2 cores")
    for i, s in enumerate(steps, 1):
        if not stale[s.target]:
            print(f"[{i}/{len(steps)}] {s.target}: fresh, skipped")
            continue
        print(f"[{i}/{len(steps)}] {s.target}: stale ({stale[s.target]}); about {s.minutes:.0f} min, "
              f"{left:.0f} min left in all", flush=True)
        if not dry:
            if s.target == "seed-variants":
                for name in s.files:
                    for f in (where(s, name), where(s, name).with_suffix(".json")):
                        f.unlink(missing_ok=True)
            t0 = time.perf_counter()
            subprocess.run(["make", s.target], cwd=REPO, check=True, env=os.environ | {"CSM_PROGRESS": "0"})
            again = why_stale(s)
            if again:
                raise SystemExit(f"{s.target} ran but is still stale: {again}")
            print(f"    done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        left -= s.minutes
    return [s.target for s in todo]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m csm_lib.bench.results", description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="say what is fresh and what is stale; run nothing")
    run(dry=p.parse_args(argv).list)


if __name__ == "__main__":
    main()
