"""``csm_lib.verdicts``: the README's claims table is its output, no verdict or number in it is typed by hand, and
each rule flips where its threshold says, on made-up numbers as on the committed ones."""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import pytest

from csm_lib.verdicts import table as V  # the table, and every constant, rule and type of rules.py

ROOT = Path(__file__).resolve().parents[1]
SEED_REPORT = ROOT.parent / "shared" / "seed"  # the seed report sits beside the repository, not in it
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def readme_table() -> str:
    """The table under the README's "## Seed claims: status", as written."""
    section = (ROOT / "README.md").read_text().split("## Seed claims: status\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def real(**files) -> V.Results:
    """The committed results, with some files replaced by made-up (edited) copies."""
    return V.Results(ROOT, files)


def edited(path: str) -> dict:
    return copy.deepcopy(json.loads((ROOT / path).read_text()))


def judged(key: str, results: V.Results | None = None) -> V.Claim:
    return next(c for c in V.claims(ROOT, results) if c.key == key)


def package_trees() -> list[ast.Module]:
    """Every module of ``csm_lib/verdicts/``, parsed."""
    modules = sorted(Path(V.__file__).parent.glob("*.py"))
    assert len(modules) > 1, "csm_lib.verdicts is a package of modules"
    return [ast.parse(p.read_text()) for p in modules]


# ------------------------------------------------------------------------------------ the README and the package


def test_the_readmes_claims_table_is_the_modules_output():
    """``python -m csm_lib.verdicts --markdown`` prints it: regenerate the README's table with it when this fails."""
    assert readme_table() == V.markdown(V.claims(ROOT))


def test_the_command_prints_the_table(capsys):
    V.main(["--markdown", f"--root={ROOT}"])
    assert capsys.readouterr().out.strip() == readme_table()


def test_a_chapter_shows_the_tables_rows_for_its_claims():
    rows = V.for_chapter("08", ROOT).splitlines()
    assert rows[:2] == V.markdown([]).splitlines()  # the README's header
    assert set(rows[2:]) <= set(readme_table().splitlines())  # the README's rows, word for word
    claims = ("3.5ms inference", "speculative decoding", "flash attention", "INT8", "200ms chunks")
    assert len(rows[2:]) == 6 and all(any(c in r for r in rows) for c in claims)
    assert not any("Character Consistency" in r for r in rows)
    with pytest.raises(ValueError, match="no seed claim"):
        V.for_chapter("99", ROOT)


def test_every_claim_is_judged_once_with_its_evidence():
    rows = V.claims(ROOT)
    assert [c.key for c in rows] == list(V.ORDER) and len(rows) >= 35
    for c in rows:
        assert c.verdict in V.VERDICTS and c.evidence in V.EVIDENCE, c.key
        assert c.detail.startswith("because ") == (c.verdict in (V.NOT_TESTABLE, V.NOT_ADDRESSED)), c.key
        assert bool(c.floor) == (c.evidence == V.DEFINED), f"{c.key}: a definition of ours states its chance or floor"
        assert "|" not in c.claim + c.detail + c.qualifier + c.floor, c.key  # a Markdown cell
        for source in c.sources:
            assert (ROOT / source).exists(), f"{c.key} cites {source}"


def test_no_verdict_is_a_literal_string():
    """Each verdict word is written once in the whole package, as its constant; rows name the constant or a rule
    computes it."""
    strings = [n.value for tree in package_trees() for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for word in V.VERDICTS:
        assert strings.count(word) == 1, f"{word!r} is typed {strings.count(word)} times in csm_lib/verdicts/"


ALLOWED = r"`[^`]*`|RTX 4090|H200|bf16|fp16|fp32|INT8|F0|95%|codebook-0|Codebook 0|chapters? \d\d|p50|p95"


def test_no_number_is_typed_into_a_sentence():
    """Inside the functions that judge, every number of a sentence is formatted from a file or a constant: a string
    literal with a space and a digit is a number typed by hand. Exempt: a claim's own words (the second argument of
    ``Claim`` / ``judged``), keys into the JSONs, the chapter names, and ``ALLOWED`` (names with digits). Every
    function of every module of the package is read."""
    trees = package_trees()
    exempt: set[int] = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("Claim", "judged") and len(node.args) > 1:
            exempt |= {id(n) for n in ast.walk(node.args[1])}
        if isinstance(node, ast.keyword) and node.arg == "chapter":
            exempt |= {id(n) for n in ast.walk(node.value)}
        if isinstance(node, ast.Subscript):
            exempt |= {id(n) for n in ast.walk(node.slice)}
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            exempt |= {id(n) for n in ast.walk(node.format_spec)}
    typed = []
    for fn in (n for tree in trees for n in tree.body if isinstance(n, ast.FunctionDef)):
        body = fn.body[1:] if ast.get_docstring(fn) else fn.body
        for node in (n for stmt in body for n in ast.walk(stmt)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exempt:
                text = re.sub(ALLOWED, "", node.value)
                if " " in text and re.search(r"\d", text):
                    typed.append(f"{fn.name}: {node.value!r}")
    assert not typed, "numbers typed by hand:\n" + "\n".join(typed)


def test_the_claims_quote_the_seeds_numbers():
    """Every number in a claim's words is one the seed report prints (it sits outside the repository: skipped
    where it is absent)."""
    reports = sorted(SEED_REPORT.glob("*.txt")) if SEED_REPORT.is_dir() else []
    if not reports:
        pytest.skip(f"no seed report in {SEED_REPORT}")
    seed = set(NUMBER.findall(" ".join(p.read_text() for p in reports)))
    quoted = {(c.key, n) for c in V.claims(ROOT) for n in NUMBER.findall(c.claim)}
    assert {(k, n) for k, n in quoted if n not in seed} == set()


# ----------------------------------------------------------------------------------------- the rules, made up


def test_a_gain_agrees_within_ten_points_and_a_larger_one_is_labelled():
    assert V.agree(78.8 - 10, 78.8) == (V.REPRODUCED, "")
    assert V.agree(78.8 + 10, 78.8) == (V.REPRODUCED, "")
    assert V.agree(78.8 - 10.1, 78.8) == (V.NOT_REPRODUCED, "smaller gain")
    assert V.agree(89.2, 78.8) == (V.NOT_REPRODUCED, "larger gain")
    assert V.gain_pct(180, 850) == pytest.approx(78.8, abs=0.05)  # the seed's own column, computed its way


def test_scores_bars_speedups_and_intervals():
    assert V.against_interval(0.88, [0.865, 0.96]) == (V.REPRODUCED, "")
    assert V.against_interval(0.92, [0.965, 1.0]) == (V.NOT_REPRODUCED, "higher")
    assert V.against_interval(0.91, [0.386, 0.495]) == (V.NOT_REPRODUCED, "lower")
    assert V.under(199.9, 200) == V.REPRODUCED and V.under(200, 200) == V.NOT_REPRODUCED
    assert V.speedup(1.79, 2, 3) == (V.NOT_REPRODUCED, "") and V.speedup(1.8, 2, 3) == (V.REPRODUCED, "")
    assert V.speedup(3.3, 2, 3) == (V.REPRODUCED, "") and V.speedup(3.31, 2, 3) == (V.REPRODUCED, "larger")
    assert V.pair([2267, 2965], [1214, 1745]) == "confirmed"
    assert V.pair([1214, 1745], [1659, 2150]) == "unresolved" and V.pair([248, 317], [708, 824]) == "reversed"
    assert V.above_chance([0.41, 0.57]) == "at chance" and V.above_chance([0.51, 0.6]) == "above chance"
    plain = {"sim": 0.84, "sim_ci95": [0.82, 0.86], "wer": 0.58, "wer_ci95": [0.54, 0.63]}
    assert V.helps(plain | {"sim": 0.8, "sim_ci95": [0.78, 0.83]}, plain, ("sim", "wer")) == ([], False)
    assert V.helps(plain | {"wer": 0.4, "wer_ci95": [0.35, 0.45]}, plain, ("sim", "wer")) == (["wer"], True)
    assert V.helps(plain | {"wer": 0.7, "wer_ci95": [0.65, 0.75]}, plain, ("sim", "wer")) == (["wer"], False)


def test_the_seeds_stack_counted_as_our_blocks():
    import torch

    from csm_lib.backbone import Block, TransformerConfig

    with torch.device("meta"):
        block = Block(TransformerConfig(512, 12, 8, 8, 512 * V.MLP_RATIO), 0)
    assert V.llama_stack_parameters(512, 12) == 12 * sum(p.numel() for p in block.parameters())


def test_a_claim_without_because_is_refused():
    with pytest.raises(ValueError):
        V.Claim("x", "a claim", V.NOT_TESTABLE, "no reason", V.NOT_MEASURED)
    with pytest.raises(ValueError):
        V.Claim("x", "a claim", "reproduced for the first byte", "", V.MEASURED)


# --------------------------------------------------------------- the rules on the committed files, edited


def test_the_gain_is_judged_on_the_full_turn_not_on_speech_out():
    lat = edited(V.LAT)
    full = lat["full_turn"]["systems"]
    full["csm"]["median_ms"] = full["pipeline"]["median_ms"] * (1 - 0.788)  # the seed's +78.8% on its column
    assert judged("gain_csm", real(**{V.LAT: lat})).verdict == V.REPRODUCED
    full["csm"]["median_ms"] = full["pipeline"]["median_ms"] * (1 - 0.60)
    lat["speech_out"]["csm"]["first_audio"]["median_ms"] = lat["speech_out"]["pipeline"]["first_audio"]["median_ms"] * (
        1 - 0.788)  # the seed's number on speech out changes nothing
    claim = judged("gain_csm", real(**{V.LAT: lat}))
    assert (claim.verdict, claim.qualifier) == (V.NOT_REPRODUCED, "smaller gain")
    assert "+78.8%" in claim.detail and "+60.0% on the full turn" in claim.detail


def test_end_to_end_and_ordering_flip_with_the_full_turn():
    lat = edited(V.LAT)
    full = lat["full_turn"]["systems"]
    full["csm"] |= {"median_ms": 199.0, "ci95_ms": [150.0, 199.5]}
    assert judged("end_to_end", real(**{V.LAT: lat})).verdict == V.REPRODUCED
    full["csm"]["median_ms"] = 200.0
    assert judged("end_to_end", real(**{V.LAT: lat})).verdict == V.NOT_REPRODUCED
    assert judged("ordering", real(**{V.LAT: lat})).verdict == V.NOT_REPRODUCED  # VALL-E vs the pipeline: unsure
    full["valle"] |= {"median_ms": 2200.0, "ci95_ms": [2160.0, 2250.0]}  # apart, between AudioLM and the pipeline
    full["audiolm"]["ci95_ms"] = [2300.0, 2900.0]
    assert judged("ordering", real(**{V.LAT: lat})).verdict == V.REPRODUCED


def test_a_score_flips_at_its_interval():
    qt = edited(V.QT)
    csm = qt["systems"]["csm"]["summary"]
    csm["emotional_coherence_ci95"] = [0.85, 0.91]
    assert judged("emotional_coherence", real(**{V.QT: qt})).verdict == V.REPRODUCED
    csm["emotional_coherence_ci95"] = [0.85, 0.909]
    claim = judged("emotional_coherence", real(**{V.QT: qt}))
    assert (claim.verdict, claim.qualifier, claim.floor) == (V.NOT_REPRODUCED, "lower", "chance 0.5")
    assert "every system" in judged("voice_consistency").floor  # what every system scores on it, stated


def test_the_memory_bank_carries_a_conversation_only_above_chance():
    qt = edited(V.QT)
    qt["systems"]["csm_memory"]["summary"]["character_consistency_ci95"] = [0.51, 0.6]
    assert judged("memory", real(**{V.QT: qt})).verdict == V.REPRODUCED
    qt["systems"]["csm_memory"]["summary"]["character_consistency_ci95"] = [0.5, 0.6]
    claim = judged("memory", real(**{V.QT: qt}))
    assert claim.verdict == V.NOT_REPRODUCED
    assert "cut at turn boundaries" in claim.detail and "steps from the reference" in claim.detail


def test_eight_gigabytes_needs_a_configuration_under_the_cap():
    gpu = edited(V.GPU)
    assert judged("gpu_8gb", real(**{V.GPU: gpu})).verdict == V.REPRODUCED
    for row in gpu["grid"] + gpu["capped"]:
        if row["fused_adam"]:
            row |= {"fits": False, "max_allocated_gb": 9.0}
    claim = judged("gpu_8gb", real(**{V.GPU: gpu}))
    assert claim.verdict == V.NOT_REPRODUCED and "Under it: none" in claim.detail


def test_the_8gb_claim_names_every_configuration_under_the_cap():
    gpu = json.loads((ROOT / V.GPU).read_text())
    under = {(r["fused_adam"], r["checkpointing"], r["micro_batch"]) for r in gpu["grid"]
             if r["max_allocated_gb"] <= gpu["cap_bytes"] / 1e9}
    detail = judged("gpu_8gb").detail
    for fused, ckpt in {(f, c) for f, c, _ in under}:
        sizes = ", ".join(str(b) for f, c, b in sorted(under) if (f, c) == (fused, ckpt))
        said = f"{'fused' if fused else 'default'} AdamW {'with' if ckpt else 'without'} checkpointing at micro-batch"
        assert f"{said} {sizes} (" in detail


def test_serving_is_judged_on_the_whole_body():
    srv = edited(V.SRV)
    one = srv["levels"]["1"]
    one["rtf_wall_median"] = 0.199 / one["audio_s_median"]  # a whole reply in 199 ms
    assert judged("serving", real(**{V.SRV: srv})).verdict == V.REPRODUCED
    one["rtf_wall_median"] = 0.2 / one["audio_s_median"]
    one["ttfb_p50_ms"] = 1.0  # a fast first byte is not a whole response
    claim = judged("serving", real(**{V.SRV: srv}))
    assert (claim.verdict, claim.qualifier) == (V.NOT_REPRODUCED, "whole body")


def test_speed_ups_and_int8_quality_flip_at_their_thresholds():
    inf = edited(V.INF)
    inf["int8"]["paper_422m_random"]["speedup_x"] = 1.79
    assert judged("int8_speed", real(**{V.INF: inf})).verdict == V.NOT_REPRODUCED
    inf["speculative"]["greedy"]["speedup_x"] = 2.0
    assert judged("speculative", real(**{V.INF: inf})).verdict == V.REPRODUCED
    quality = inf["int8"]["quality"]
    quality["int8"]["wer"] = quality["fp32"]["wer"] + 0.0199
    assert judged("int8_quality", real(**{V.INF: inf})).verdict == V.REPRODUCED
    quality["int8"]["wer"] = quality["fp32"]["wer"] + 0.0201
    assert judged("int8_quality", real(**{V.INF: inf})).verdict == V.NOT_REPRODUCED


def test_what_was_not_measured_says_so():
    assert judged("flash").evidence == V.NOT_MEASURED  # only time was measured, not the memory the seed claims
    assert judged("gpu_ms").evidence == V.COST_MODEL
    assert "uncompiled" in judged("gpu_ms").detail and "not measured" in judged("gpu_ms").detail
    chunks = judged("chunks").detail  # the chunk sizes run, none of them the seed's
    inf = json.loads((ROOT / V.INF).read_text())
    frame_ms = 1e3 / json.loads((ROOT / V.CODEC_CK).read_text())["config"]["frame_rate"]
    rows = inf["first_audio"]["rows"]
    sizes = {r["chunk_frames"] * frame_ms for r in rows if r["chunk_frames"] == r["first_chunk_frames"]}
    assert V.SEED["chunk_ms"] not in sizes and f"{V.SEED['chunk_ms']} ms chunk is" in chunks
