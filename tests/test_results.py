"""A result belongs to a model: every committed result of ``make results`` was measured on the shipped reference,
or is declared stale here with the reason; every other result that names the reference is declared history.

``csm_lib/bench/results.py`` decides freshness (the ``measured_with`` fingerprint in each JSON against the shipped
checkpoint's); these lists must be exact, so a re-measured step has to leave ``STALE`` and a newly shipped model
makes every step appear here until ``make results`` has run.
"""

import json
from pathlib import Path

from csm_lib import checkpoint
from csm_lib.bench.results import REFERENCE, STEPS, why_stale

ROOT = Path(__file__).resolve().parents[1]

# make target -> why its committed files are not of the shipped reference (re-measured by `make results`)
STALE = {
    "seed-variants": "chapter 10's variants were trained from the reference at step 3,736",
    "bench-quality": "chapter 10's table was measured on the reference at step 3,736",
}
# results that name the reference but belong to an earlier one on purpose: the chapters cite them as its record
HISTORY = {
    "reference_model_6000.json": "stage 1's reference (step 6,000), judged by make model-eval at the time",
    "temperature_sweep_6000.json": "stage 1's temperature sweep",
    "reference_model_7800.json": "stage 2's reference (step 7,800), judged by make model-eval at the time; chapter 07b "
                                 "compares the stages with it, and the alignment study started from that model",
}


def test_every_step_is_fresh_or_declared_stale():
    stale = {s.target: why_stale(s) for s in STEPS}
    undeclared = {t: why for t, why in stale.items() if why and t not in STALE}
    assert not undeclared, f"stale results: re-measure them (make results) or declare them in STALE: {undeclared}"
    fresh_but_declared = [t for t in STALE if not stale[t]]
    assert not fresh_but_declared, f"{fresh_but_declared} are fresh now: remove them from STALE"


def test_every_result_that_names_the_reference_is_a_step_or_history():
    written = {name for s in STEPS for name in s.files}
    shipped = str(REFERENCE.relative_to(ROOT))
    loose = []
    for path in sorted((ROOT / "results").glob("*.json")):
        record = json.loads(path.read_text())
        named = isinstance(record, dict) and (record.get("measured_with") or {}).get("path") == shipped
        if named and path.name not in written and path.name not in HISTORY:
            loose.append(path.name)
    assert not loose, f"results measured on the reference that `make results` does not re-measure: {loose}"
    assert all((ROOT / "results" / name).exists() for name in HISTORY)


def test_history_is_not_of_the_shipped_model():
    fp = checkpoint.fingerprint(REFERENCE)
    for name in HISTORY:
        assert json.loads((ROOT / "results" / name).read_text())["measured_with"]["fingerprint"] != fp, name


def test_a_changed_reference_makes_every_step_stale(tmp_path):
    other = tmp_path / "csm_other.safetensors"
    other.write_bytes(REFERENCE.read_bytes()[:-1] + b"\0")  # another file: another fingerprint
    other.with_suffix(".json").write_text(REFERENCE.with_suffix(".json").read_text())
    assert all(why_stale(s, other) for s in STEPS)
