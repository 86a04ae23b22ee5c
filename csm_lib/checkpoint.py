"""Checkpoints: ``name.safetensors`` (tensors only) plus ``name.json`` (config, provenance, metrics).

Both files are written to a temporary name and renamed, JSON last, so a reader that finds the
JSON finds complete weights. No pickle is involved: safetensors holds tensors and nothing that
could run code.

Chapter 03 (``notebooks/03_codec.ipynb``) saves the codec with it, chapter 07a's training loop
(``notebooks/07a_training.ipynb``) the CSM.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from csm_lib.outputs import REPO


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary file in the same folder, then rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix + ".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fingerprint(path: str | Path) -> str:
    """Short content hash of a file: names a codec's token cache, ties a model to its codec and a
    result to the model it measured (``model_record``)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def model_record(path: str | Path) -> dict:
    """Which model a result was measured with: its path, its training steps and its content fingerprint.

    Benchmarks store this beside their numbers, so a result stays tied to the weights that made it
    after the model is trained further (``tests/test_readme.py`` lists the results that are behind)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    return {"path": str(shown), "steps": meta.get("steps"), "fingerprint": fingerprint(path)}


def cached_npz(path: Path, keys: list[str], compute) -> dict:
    """Arrays named ``keys``: from the ``.npz`` cache at ``path`` when it holds them all, else
    ``compute()`` (a dict of arrays), written to ``path`` atomically for the next time."""
    if path.exists():
        with np.load(path) as z:
            arrays = dict(z)
        if all(k in arrays for k in keys):
            return arrays
    arrays = compute()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    atomic_write(path, write)
    return arrays


def save(path: str | Path, state: dict[str, torch.Tensor], meta: dict, dtype: torch.dtype | None = None) -> Path:
    """Write ``path`` (.safetensors) and its JSON sidecar atomically. ``dtype`` casts float tensors."""
    path = Path(path).with_suffix(".safetensors")
    tensors = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save`: ``(tensors as float32 where floating, meta)``."""
    path = Path(path).with_suffix(".safetensors")
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        raise FileNotFoundError(f"checkpoint {path} or its sidecar {sidecar.name} is missing")
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    return tensors, json.loads(sidecar.read_text())


def load_meta(path: str | Path) -> dict:
    """Only the JSON sidecar of checkpoint ``path`` (its tensors are not read)."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.exists():
        raise FileNotFoundError(f"the sidecar {sidecar} of checkpoint {path} is missing")
    return json.loads(sidecar.read_text())


def git_commit() -> str:
    """The repository's commit (``CSM_COMMIT`` overrides it, for copies without ``.git``)."""
    if os.environ.get("CSM_COMMIT"):
        return os.environ["CSM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        commit = out.stdout.strip() or "unknown"
        # "-dirty" when the code differs from the commit; written outputs (results/, figures/) do not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)figures"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent.parent, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"{cpu_model()} CPU ({torch.backends.cpu.get_cpu_capability()}), {n} thread{'s' if n != 1 else ''}"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine's architecture: machines of one kind
    differ (one session's EPYC had AVX-512 with bf16, another's AVX2 only), and timings with them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(module: str, device: str | torch.device) -> dict:
    """Where a checkpoint came from: the exact command, commit, device and library versions."""
    return {"command": " ".join(["python -m", module, *sys.argv[1:]]),
            "commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
            "python": platform.python_version()}


def copy(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Copy checkpoint ``src`` (and its sidecar, and a tokenizer beside it) to ``dst``, floats cast to ``dtype``."""
    tensors, meta = load(src)
    out = save(dst, tensors, meta | ({"stored_dtype": str(dtype).removeprefix("torch.")} if dtype else {}), dtype)
    tok = Path(src).with_suffix(".tokenizer.json")
    if tok.exists():
        atomic_write(out.with_suffix(".tokenizer.json"), lambda tmp: Path(tmp).write_text(tok.read_text()))
    return out


if __name__ == "__main__":  # python -m csm_lib.checkpoint SRC DST [bf16]: a copy (used by `make seed-variants`)
    copy(sys.argv[1], sys.argv[2], {"bf16": torch.bfloat16, "fp16": torch.float16}.get(sys.argv[3])
         if len(sys.argv) > 3 else None)
