"""Every chapter is one a learner can follow: it opens with a box and closes with a summary and exercises.

Pure JSON reading of ``notebooks/[0-9][0-9]*_*.ipynb`` (a chapter is ``NN``, or ``NNa`` and ``NNb`` when it
comes in two parts), markdown cells only (nothing is executed):

* the opening box, in the title cell or the cell after it: **In this chapter**, **You will learn**,
  **You need** (earlier chapters) and **CPU time** (measured);
* the chapter closes with a ``## Summary`` cell and then an ``## Exercises`` cell, its last markdown
  cell, and every exercise says what it costs on the CPU (``*CPU: ...*``);
* chapter 00 holds the glossary, with every term below and the chapter that explains it, and the map
  of the ``csm_lib`` files each chapter builds on, every one of which exists;
* no chapter's markdown tells history: no issue number ("issue 11", "#12"), no corpus hash
  (``v2-n4174-3e01bd6f28``). History belongs in a note outside the chapters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
NUMBERS = [p.name.split("_", 1)[0] for p in CHAPTERS]  # "00" ... "07a", "07b" ... "13"
CHAPTER_ID = r"\d\d[ab]?"

BOX = ("**In this chapter**", "**You will learn**", "**You need**", "**CPU time**")
ISSUE = re.compile(r"\bissues?\s*#?\d+|(?<![\w&/#])#\d+\b", re.IGNORECASE)
CORPUS_HASH = re.compile(r"\bv\d+-n\d+-[0-9a-f]{10}\b")
COST = re.compile(r"\*CPU:\s+[^*]+\*")

# the terms of issue 33's list, then the others a reader meets in the chapters
ISSUE_TERMS = ["RVQ", "codebook 0", "nats", "RTF", "TTFA", "TTFB", "SIM", "WER", "CER", "style error", "SDPA",
               "GQA"]
GLOSSARY_TERMS = ISSUE_TERMS + [
    "KV cache", "compute amortization", "Mimi-like split RVQ", "12.5 Hz frame", "backbone", "audio decoder",
    "context", "speaker token", "phones", "temperature", "top-k", "bootstrap 95% interval", "resemblyzer", "pYIN",
    "silero-vad", "pocketsphinx", "JSGF", "speculative decoding", "INT8", "flash attention", "memory bank",
    "alignment", "LoRA", "LJSpeech layout"]

def chapters() -> list:
    return [pytest.param(p, id=p.stem) for p in CHAPTERS]


def markdown(path: Path) -> list[str]:
    """The sources of a notebook's markdown cells, in order."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def heading_cell(cells: list[str], heading: str) -> int:
    """The index of the markdown cell that has ``heading`` as a line of its own (-1 if none)."""
    found = [i for i, s in enumerate(cells) if heading in s.splitlines()]
    assert len(found) <= 1, f"{heading!r} in more than one cell"
    return found[0] if found else -1


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, split into cells (``\\|`` is not a separator)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_the_chapters_are_numbered_in_order():
    assert NUMBERS == [f"{i:02d}" for i in range(7)] + ["07a", "07b"] + [f"{i:02d}" for i in range(8, 14)]


@pytest.mark.parametrize("path", chapters())
def test_each_chapter_opens_with_a_box(path):
    cells = markdown(path)
    assert cells[0].startswith("# "), "a chapter's first cell is its title"
    box = next((s for s in cells[:2] if BOX[0] in s), None)
    assert box is not None, f"the title cell or the one after it opens with {BOX[0]}"
    missing = [label for label in BOX if label not in box]
    assert not missing, f"the opening box lacks {missing}"
    need = box.split("**You need**", 1)[1].split("**CPU time**", 1)[0]
    if not path.name.startswith("00"):
        assert re.search(r"chapters? \d\d", need), "the box names the earlier chapters it needs"


@pytest.mark.parametrize("path", chapters())
def test_each_chapter_closes_with_a_summary_and_exercises(path):
    cells = markdown(path)
    summary, exercises = heading_cell(cells, "## Summary"), heading_cell(cells, "## Exercises")
    assert summary >= 0, "a '## Summary' cell of ideas"
    assert exercises == len(cells) - 1, "the '## Exercises' cell is the chapter's last markdown cell"
    assert summary < exercises
    assert cells[exercises].startswith("## Exercises"), "the exercises have a cell of their own"


@pytest.mark.parametrize("path", chapters())
def test_every_exercise_says_what_it_costs(path):
    cells = markdown(path)
    i = heading_cell(cells, "## Exercises")
    assert i >= 0
    items = re.split(r"(?m)^\d+\. ", cells[i].split("## Exercises", 1)[1])[1:]
    assert items, "the exercises are a numbered list"
    costless = [n for n, item in enumerate(items, 1) if not COST.search(item)]
    assert not costless, f"exercises {costless} do not say their CPU cost (*CPU: ...*)"


@pytest.mark.parametrize("path", chapters())
def test_no_chapter_tells_history(path):
    text = "\n".join(markdown(path))
    found = sorted({m.group(0) for m in ISSUE.finditer(text)} | {m.group(0) for m in CORPUS_HASH.finditer(text)})
    assert not found, f"issue numbers or corpus hashes in the chapter's prose: {found}"


def glossary() -> dict[str, list[str]]:
    """Chapter 00's glossary: term -> the chapters that explain it."""
    cells = markdown(CHAPTERS[0])
    i = heading_cell(cells, "## Glossary")
    assert i >= 0, "chapter 00 has a '## Glossary' cell"
    out = {}
    for row in table_rows(cells[i]):
        term = re.fullmatch(r"\*\*(.+)\*\*", row[0])
        if term:
            out[term.group(1)] = re.findall(CHAPTER_ID, row[-1])
    return out


def test_chapter_00_has_the_glossary():
    terms = glossary()
    lower = {t.lower() for t in terms}
    assert all(t.lower() in lower for t in ISSUE_TERMS), [t for t in ISSUE_TERMS if t.lower() not in lower]
    missing = [t for t in GLOSSARY_TERMS if t.lower() not in lower]
    assert not missing, f"the glossary lacks {missing}"
    unplaced = [t for t, chs in terms.items() if not chs or not set(chs) <= set(NUMBERS)]
    assert not unplaced, f"terms without a chapter that explains them: {unplaced}"


def test_chapter_00_maps_every_chapter_to_files_that_exist():
    cells = markdown(CHAPTERS[0])
    i = heading_cell(cells, "## The plan, and a map of `csm_lib`")
    assert i >= 0
    rows = [r for r in table_rows(cells[i]) if re.fullmatch(CHAPTER_ID, r[0])]
    assert [r[0] for r in rows] == NUMBERS, "a row per chapter, in order"
    named = {f for r in rows for f in re.findall(r"`([\w/]+(?:\.py|/))`", " ".join(r[2:]))}
    assert len(named) > 30
    package = ROOT / "csm_lib"
    prefixes = {"", "serve/", "baselines/", "judges/", "bench/"}
    missing = sorted(f for f in named if not any((package / (p + f)).exists() for p in prefixes))
    assert not missing, f"the map names files csm_lib does not have: {missing}"


SOLUTIONS = ROOT / "notebooks" / "solutions"
SOLVED = re.compile(r"Worked solutions: \[`(solutions_\d\d-\d\d)\.ipynb`\]\(solutions/\1\.ipynb\), "
                    r"section \"Chapter (\d\d[ab]?)\"")


@pytest.mark.parametrize("path", chapters())
def test_every_chapter_points_to_its_worked_solutions(path):
    """The exercises cell names a solutions notebook that exists and holds a section for this chapter, in which
    every exercise of the chapter is answered by its number (run, or what to run and look for)."""
    cells = markdown(path)
    exercises = cells[heading_cell(cells, "## Exercises")]
    found = SOLVED.search(exercises)
    chapter = path.name.split("_", 1)[0]
    assert found and found.group(2) == chapter, "the exercises cell links its solutions section"
    solutions = SOLUTIONS / f"{found.group(1)}.ipynb"
    assert solutions.exists()
    text = "\n".join(markdown(solutions))
    section = re.split(r"(?m)^## Chapter ", text)
    mine = next((s for s in section if s.startswith(f"{chapter} ")), None)
    assert mine is not None, f"{solutions.name} has no '## Chapter {chapter}' section"
    n = len(re.findall(r"(?m)^\d+\. ", exercises.split("## Exercises", 1)[1]))
    assert n > 0, "the exercises are a numbered list"
    answered = {int(x) for x in re.findall(r"\*\*(\d+)\b", mine)} | {
        int(x) for group in re.findall(r"(?:^|\n)(\d+(?:, \d+)*(?: and \d+)?) (?:need|take|are|change)", mine)
        for x in re.findall(r"\d+", group)} | {int(x) for a, b in re.findall(r"\*\*(\d+)[–-](\d+)\*\*", mine)
                                                for x in range(int(a), int(b) + 1)}
    if "All four exercises" in mine or "all four exercises" in mine:
        answered |= {1, 2, 3, 4}
    missing = sorted(set(range(1, n + 1)) - answered)
    assert not missing, f"exercises {missing} of chapter {chapter} are not answered in {solutions.name}"


def test_solutions_tell_no_history():
    for nb in sorted(SOLUTIONS.glob("*.ipynb")):
        text = "\n".join(markdown(nb))
        found = sorted({m.group(0) for m in ISSUE.finditer(text)} | {m.group(0) for m in CORPUS_HASH.finditer(text)})
        assert not found, f"{nb.name}: {found}"
