"""The benchmarks as commands: ``python -m csm_lib.bench NAME`` runs one and writes ``results/<its file>.json``.

    python -m csm_lib.bench kv-cache         # chapter 04: the KV cache's speed-up vs context length
    python -m csm_lib.bench amortization     # chapter 05: a training step, decoder on every frame vs 1/16
    python -m csm_lib.bench context-cost     # chapter 06: prefill over a context vs one cached position
    python -m csm_lib.bench training-knobs   # chapter 07a: fp32 vs bf16 autocast vs checkpointing
    python -m csm_lib.bench inference        # chapter 08: the fast path, time to first audio, INT8, speculation
    python -m csm_lib.bench latency          # chapter 09: the latency table (after make baselines)
    python -m csm_lib.bench loop             # chapter 09: the four systems under a streaming voice loop
    python -m csm_lib.bench serve            # chapter 11: the HTTP server under 1, 4 and 8 streaming clients

(``make bench`` runs chapters 04-08's.) Chapter 10's quality table takes other arguments and has its own
command, ``python -m csm_lib.bench.quality``. This module imports every benchmark it dispatches to, and no
module imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from csm_lib.bench.amortization import bench_amortization
from csm_lib.bench.context_cost import bench_context_cost
from csm_lib.bench.inference import bench_inference
from csm_lib.bench.kv_cache import bench_kv_cache
from csm_lib.bench.latency import bench_latency
from csm_lib.bench.loop import bench_voice_loop
from csm_lib.bench.serve import bench_serve
from csm_lib.bench.training_knobs import bench_training_knobs
from csm_lib.checkpoint import git_commit
from csm_lib.outputs import results_dir

BENCHMARKS: dict[str, tuple[Callable[..., dict], str, int]] = {  # name -> (function, output file, default threads)
    "kv-cache": (bench_kv_cache, "kv_cache_speedup.json", 1),
    "amortization": (bench_amortization, "amortization.json", 1),
    "context-cost": (bench_context_cost, "context_cost.json", 2),
    "training-knobs": (bench_training_knobs, "training_knobs.json", 2),
    "inference": (bench_inference, "inference.json", 2),
    "latency": (bench_latency, "latency_table.json", 2),
    "loop": (bench_voice_loop, "voice_loop.json", 2),
    "serve": (bench_serve, "serving.json", 1),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m csm_lib.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the benchmark's own)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=None, help="default: results/<the benchmark's file>")
    a = p.parse_args(argv)
    fn, filename, threads = BENCHMARKS[a.name]
    kwargs = {"threads": a.threads or threads} | ({"repeats": a.repeats} if a.repeats else {})
    t0 = time.perf_counter()
    record = fn(**kwargs)
    command = "python -m csm_lib.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"command": command, "commit": git_commit(), "torch": torch.__version__,
              "wall_s": round(time.perf_counter() - t0, 1)} | record
    out = Path(a.out) if a.out else results_dir() / filename
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
