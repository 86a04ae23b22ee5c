"""Sesame's harder checks at our scale: homographs read by their sentence, and a pronunciation carried on
from the context.

**What the model is given.** CSM here reads phones from a front end (``text.phonemize``) that looks
each word up *alone* (flite's ``t2p`` on the word): "read" is always ``r eh1 d``, "lead" always
``l eh1 d``, "tear" always ``t iy1 r``, whatever the sentence. The corpus audio the model was
trained on is flite reading *whole sentences*, and flite's tagger picks a homograph's reading from
the sentence ("I will read" -> ``r iy d``). So the phones the model reads never say which reading
is meant; a model that reads a homograph right has learnt it from the words around it. The front
end does not resolve the homograph; the model either does or does not (a model that follows its
phones reads each homograph one way and scores 0.5 on sentences balanced between the readings).

**Homographs** (``HOMOGRAPHS``): 7 words x 2 readings x 3 sentences, new sentences (none in
training). Score: the share of samples whose homograph is heard in the sentence's reading.

**Pronunciation continuation** (``CONTINUATION``): 6 words with two accepted pronunciations, one of
them the lexicon's. Speaker 0 says the word in one pronunciation in an earlier turn (flite with a
respelling, e.g. "datta"; the transcript keeps "data"), speaker 1 answers, and speaker 0 says the
word again in the turn generated. Score: the share of samples that keep the earlier turn's
pronunciation; half the conversations use each pronunciation, so a system that ignores the context
scores 0.5. A phone-reading model is handed the lexicon's pronunciation in the target, so carrying
on the other one means going against its input: the check asks whether the context outweighs it.

**The judge** is a forced choice (``ForcedChoice``): pocketsphinx decodes the audio against a
grammar that is the sentence itself, with the word allowed in each pronunciation only; the
pronunciation on the better path is the one heard. It is validated on flite audio whose
pronunciation is known (the word respelled to force each one): ``validate``.

Shapes: audio ``(T,)`` float at ``sr``.

Explained in chapter 10 (``notebooks/10_quality_table.ipynb``).
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csm_lib import data, metrics
from csm_lib.outputs import RESULTS

VOICES = {0: "slt", 1: "awb"}  # the two speakers of every conversation here
OPENING = "I have been thinking about what you said."  # speaker 0's first turn (homographs), its voice
REPLY = "Go on, tell me more about it."  # speaker 1's turn between

# word -> {reading: (pocketsphinx pronunciations, a spelling flite says that way)}; the first reading is
# the lexicon's (what ``text.phonemize`` gives the model for the word)
READINGS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "read": {"past": (("R EH D",), "red"), "present": (("R IY D",), "reed")},
    "lead": {"metal": (("L EH D",), "led"), "verb": (("L IY D",), "leed")},
    "live": {"verb": (("L IH V",), "liv"), "adjective": (("L AY V",), "lyve")},
    "record": {"noun": (("R EH K ER D",), "reckerd"), "verb": (("R AH K AO R D", "R IH K AO R D"), "rikord")},
    "wind": {"air": (("W IH N D",), "winned"), "turn": (("W AY N D",), "wined")},
    "close": {"near": (("K L OW S",), "klohs"), "shut": (("K L OW Z",), "cloze")},
    "tear": {"drop": (("T IY R", "T IH R"), "teer"), "rip": (("T EH R",), "tair")},
}
HOMOGRAPHS: list[tuple[str, str, str]] = [  # (word, reading meant, sentence)
    ("read", "present", "I will read the letter tonight."),
    ("read", "present", "Please read the label first."),
    ("read", "present", "They like to read before bed."),
    ("read", "past", "Yesterday she read the whole report."),
    ("read", "past", "He has read that book twice."),
    ("read", "past", "Last week we read it aloud."),
    ("lead", "verb", "She will lead the team next year."),
    ("lead", "verb", "These stairs lead to the roof."),
    ("lead", "verb", "Can you lead the way?"),
    ("lead", "metal", "The old pipes were made of lead."),
    ("lead", "metal", "Lead is a heavy metal."),
    ("lead", "metal", "The paint still contained lead."),
    ("live", "verb", "We live near the river."),
    ("live", "verb", "They want to live in the city."),
    ("live", "verb", "Where do you live now?"),
    ("live", "adjective", "The band played a live show."),
    ("live", "adjective", "We watched the live broadcast."),
    ("live", "adjective", "They sell live bait here."),
    ("record", "noun", "She broke the world record."),
    ("record", "noun", "Put the record on the shelf."),
    ("record", "noun", "Keep a record of your costs."),
    ("record", "verb", "We will record the meeting."),
    ("record", "verb", "Please record your answer here."),
    ("record", "verb", "They record every call."),
    ("wind", "air", "The wind blew all night."),
    ("wind", "air", "A cold wind came from the north."),
    ("wind", "air", "The wind moved the trees."),
    ("wind", "turn", "Wind the clock before bed."),
    ("wind", "turn", "The roads wind through the hills."),
    ("wind", "turn", "Did you wind the watch?"),
    ("close", "near", "The shop is close to home."),
    ("close", "near", "We were close friends."),
    ("close", "near", "That was a close call."),
    ("close", "shut", "Please close the door."),
    ("close", "shut", "They close the shop at nine."),
    ("close", "shut", "Close your eyes now."),
    ("tear", "drop", "A tear rolled down her cheek."),
    ("tear", "drop", "She wiped a tear away."),
    ("tear", "drop", "One tear fell on the page."),
    ("tear", "rip", "Do not tear the page."),
    ("tear", "rip", "Tear the paper in half."),
    ("tear", "rip", "They tear down old houses."),
]
# word -> {pronunciation: (pocketsphinx pronunciations, a spelling flite says that way)}; first = the lexicon's
VARIANTS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "data": {"day": (("D EY T AH",), "data"), "dat": (("D AE T AH",), "datta")},
    "route": {"root": (("R UW T",), "route"), "rout": (("R AW T",), "rout")},
    "schedule": {"sk": (("S K EH JH UH L", "S K EH JH UW L"), "schedule"),
                 "sh": (("SH EH JH UH L", "SH EH JH UW L"), "shedule")},
    "tomato": {"may": (("T AH M EY T OW",), "tomato"), "mah": (("T AH M AA T OW", "T OW M AA T OW"), "tomaato")},
    "harass": {"her": (("HH ER AE S",), "harass"), "hair": (("HH EH R AH S",), "hairass")},
    "progress": {"prah": (("P R AA G R EH S",), "progress"), "proh": (("P R OW G R EH S",), "prohgress")},
}
CONTINUATION: list[tuple[str, str, str]] = [  # (word, speaker 0's earlier turn, speaker 0's turn generated)
    ("data", "The data came in this morning.", "So the data looks fine to me."),
    ("data", "I sent you the data last week.", "Did the data make any sense?"),
    ("data", "Our data shows a small rise.", "Then we need more data first."),
    ("route", "We took the long route home.", "That route is prettier anyway."),
    ("route", "The bus changed its route again.", "I will check the route tonight."),
    ("route", "Is this the fastest route north?", "Let us try a new route then."),
    ("schedule", "The schedule is very tight.", "I can change the schedule for you."),
    ("schedule", "Did you see the new schedule?", "The schedule starts on Monday."),
    ("schedule", "My schedule is full today.", "Send me your schedule later."),
    ("tomato", "I grew one tomato this year.", "That tomato was the best one."),
    ("tomato", "Add a tomato to the soup.", "One tomato is plenty."),
    ("tomato", "This tomato tastes sweet.", "Cut the tomato in half."),
    ("harass", "They harass the new workers.", "No one should harass anyone."),
    ("harass", "Do not harass the cat.", "The cat will harass you back."),
    ("harass", "Reporters harass the players.", "They harass them every day."),
    ("progress", "We made good progress today.", "Progress is slow but steady."),
    ("progress", "Show me your progress so far.", "My progress has been small."),
    ("progress", "The progress report is due.", "I like the progress we made."),
]


def respell(sentence: str, word: str, spelling: str) -> str:
    """``sentence`` with ``word`` (any case) written as ``spelling``: what flite is given to force a pronunciation."""
    return re.sub(rf"\b{word}\b", lambda m: spelling.capitalize() if m.group()[0].isupper() else spelling,
                  sentence, flags=re.IGNORECASE)


class ForcedChoice:
    """Which pronunciation of one word a recording uses: pocketsphinx (general US-English acoustic model)
    aligns the audio to the sentence, with the word allowed only in the candidate pronunciations."""

    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(cmn="batch", loglevel="FATAL", lm=None)
        self._added: set[str] = set()

    def _grammar(self, sentence: str, word: str, options: dict[str, tuple[str, ...]]) -> tuple[str, dict]:
        alts, names = [], {}
        for reading, prons in options.items():
            for j, pron in enumerate(prons):
                name = f"{word}_{reading}_{j}".lower()
                if name not in self._added:
                    self.decoder.add_word(name, pron, True)
                    self._added.add(name)
                alts.append(name)
                names[name] = reading
        words = metrics.normalize_text(sentence).split()
        missing = [w for w in words if w != word and self.decoder.lookup_word(w) is None]
        if missing:
            raise ValueError(f"{missing} are not in pocketsphinx's dictionary; use sentences of dictionary words")
        body = " ".join(f"({' | '.join(alts)})" if w == word else w for w in words)
        return f"#JSGF V1.0;\ngrammar choice;\npublic <s> = {body};\n", names

    def __call__(self, audio: torch.Tensor | np.ndarray, sr: int, sentence: str, word: str,
                 options: dict[str, tuple[str, ...]]) -> str | None:
        """The reading of ``word`` heard in ``audio`` of ``sentence`` (a key of ``options``: reading ->
        pronunciations), or None when the decoder finds no path through the sentence."""
        grammar, names = self._grammar(sentence, word, options)
        d = self.decoder
        d.add_jsgf_string("choice", grammar)
        d.activate_search("choice")
        x = metrics._as_16k(torch.as_tensor(audio, dtype=torch.float32), sr)
        d.reinit_feat()
        d.start_utt()
        d.process_raw((x.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        heard = [names[w] for w in (hyp.hypstr.split() if hyp else []) if w in names]
        return heard[0] if heard else None


@dataclass
class Item:
    """One conversation of a check: the earlier turns (speaker, transcript, what flite is told to say),
    the turn to speak (speaker 0), the word judged, its readings and the reading that counts as right."""
    check: str  # "homograph" | "continuation"
    word: str
    text: str
    right: str
    context: list[tuple[int, str, str]]
    options: dict[str, tuple[str, ...]]
    spellings: dict[str, str]

    @property
    def lexicon(self) -> str:
        """The reading the front end gives the model (the first of ``options``)."""
        return next(iter(self.options))


def items() -> list[Item]:
    """Every conversation of both checks: 42 homograph sentences and 18 x 2 continuations (each earlier
    pronunciation once)."""
    out = []
    for word, reading, sentence in HOMOGRAPHS:
        r = READINGS[word]
        out.append(Item("homograph", word, sentence, reading, [(0, OPENING, OPENING), (1, REPLY, REPLY)],
                        {k: v[0] for k, v in r.items()}, {k: v[1] for k, v in r.items()}))
    for word, earlier, target in CONTINUATION:
        v = VARIANTS[word]
        for said in v:
            out.append(Item("continuation", word, target, said,
                            [(0, earlier, respell(earlier, word, v[said][1])), (1, REPLY, REPLY)],
                            {k: p[0] for k, p in v.items()}, {k: p[1] for k, p in v.items()}))
    return out


def flite(text: str, speaker: int) -> tuple[torch.Tensor, int]:
    return data.synthesize(text, VOICES[speaker])


def csm_turn(gen, it: Item, seed: int, context_audio: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The turn of ``it`` spoken by the CSM of ``gen`` (a ``Generator``) after the item's earlier turns (flite,
    or ``context_audio[what flite says]``), sampled as in the quality table (``quality.SAMPLING``)."""
    from csm_lib.generate import Segment
    from csm_lib.judges.quality import SAMPLING

    audio = context_audio or {}
    ctx = [Segment(s, text, audio[said] if said in audio else flite(said, s)[0]) for s, text, said in it.context]
    return gen.decode(list(gen.frames(it.text, 0, ctx, 6000, seed=seed, **SAMPLING)))


def validate(judge: ForcedChoice, its: list[Item]) -> dict:
    """The judge on flite audio whose pronunciation is forced by respelling, each sentence in each reading:
    the share it hears right, per check, with n and a 95% interval over sentences."""
    out = {}
    for check in ("homograph", "continuation"):
        sentences = {(it.word, it.text): it for it in its if it.check == check}
        hits, words = [], []
        for it in sentences.values():
            row = []
            for reading, spelling in it.spellings.items():
                x, sr = flite(respell(it.text, it.word, spelling), 0)
                row.append(judge(x, sr, it.text, it.word, it.options) == reading)
            hits.append(row)
            words.append(it.word)
        h = np.array(hits, dtype=float)
        out[check] = {"accuracy": round(float(h.mean()), 4), "n": int(h.size), "n_sentences": len(h),
                      "ci95": metrics.bootstrap_ci(lambda i, h=h: h[i].mean(), len(h)),
                      "per_reading": {"lexicon": round(float(h[:, 0].mean()), 4),
                                      "other": round(float(h[:, 1].mean()), 4)},
                      "per_word": {w: round(float(h[[k for k, x in enumerate(words) if x == w]].mean()), 4)
                                   for w in dict.fromkeys(words)}}
    return out


def summarize(records: list[dict]) -> dict:
    """Per-sample records (``item``, ``right``, ``heard``, ``lexicon``) -> the share right and the share
    heard as the lexicon's reading, with bootstrap 95% intervals over conversations (seeds together)."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["item"], []).append(i)
    rows = list(groups.values())
    right = np.array([r["heard"] == r["right"] for r in records], dtype=float)
    lex = np.array([r["heard"] == r["lexicon"] for r in records], dtype=float)
    undecided = np.array([r["heard"] is None for r in records], dtype=float)

    def ci(v):
        return metrics.bootstrap_groups_ci(lambda i: v[i].mean(), rows)

    return {"score": round(float(right.mean()), 4), "ci95": ci(right), "n": len(records), "n_items": len(rows),
            "lexicon_share": round(float(lex.mean()), 4), "lexicon_share_ci95": ci(lex),
            "undecided": round(float(undecided.mean()), 4)}


def run(systems: tuple[str, ...] = ("flite", "csm"), seeds: tuple[int, ...] = (0, 1)) -> dict:
    """Both checks for each system -> ``{"validation", "systems": {name: {check: summary}}, "records"}``.

    ``flite`` reads the turn's sentence as the corpus did (homographs: flite's tagger; continuation: flite
    ignores the earlier turn); ``flite_continuing`` is flite told the earlier turn's pronunciation (an
    upper bound: a reader that carries it on); CSM-like systems (``csm`` = the reference) speak the turn
    after the earlier turns' flite audio, sampled at temperature 0.9, top-k 50, ``seeds``."""
    from csm_lib.generate import REFERENCE_CODEC, REFERENCE_MODEL, load_generator
    from csm_lib.outputs import REPO
    from csm_lib.progress import progress

    judge, its = ForcedChoice(), items()
    result: dict = {"validation": validate(judge, its), "systems": {}, "records": {}}
    context_audio = {}
    for it in its:
        for spk, _, said in it.context:
            if said not in context_audio:
                context_audio[said] = flite(said, spk)[0]
    for name in systems:
        t0, records = time.perf_counter(), []
        gen = None
        if name.startswith("csm"):
            path = REFERENCE_MODEL if name == "csm" else REPO / "checkpoints" / f"{name}.safetensors"
            gen = load_generator(path, REFERENCE_CODEC)
        for k, it in enumerate(progress(its, desc=name, unit="conversation")):
            for seed in (seeds if gen is not None else seeds[:1]):
                if gen is None:
                    said = it.text if name == "flite" else respell(it.text, it.word, it.spellings[it.right])
                    x, sr = flite(said, 0)
                else:
                    x, sr = csm_turn(gen, it, 1000 * seed + k, context_audio), gen.sample_rate
                records.append({"item": k, "check": it.check, "word": it.word, "text": it.text, "seed": seed,
                                "right": it.right, "lexicon": it.lexicon,
                                "heard": judge(x, sr, it.text, it.word, it.options)})
        result["records"][name] = records
        result["systems"][name] = {c: summarize([r for r in records if r["check"] == c])
                                   for c in ("homograph", "continuation")}
        result["systems"][name]["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return result


def in_training(its: list[Item]) -> dict:
    """How many of the checks' sentences (and their words) the reference model's training split holds."""
    import json

    from csm_lib.generate import REFERENCE_MODEL

    meta = json.loads(Path(REFERENCE_MODEL).with_suffix(".json").read_text())
    train = data.load_manifest(data.build(data.corpus_of(meta["train"])), "train")
    texts = {metrics.normalize_text(r["text"]) for r in train}
    counts: dict[str, int] = {}
    for r in train:
        for w in set(metrics.normalize_text(r["text"]).split()):
            counts[w] = counts.get(w, 0) + 1
    sentences = {it.text for it in its} | {s for it in its for _, s, _ in it.context}
    return {"sentences": len(sentences),
            "sentences_in_train": sum(metrics.normalize_text(s) in texts for s in sentences),
            "training_sentences_with_word": {w: counts.get(w, 0) for w in (*READINGS, *VARIANTS)}}


def main(argv: list[str] | None = None) -> None:
    from csm_lib.checkpoint import model_record, provenance
    from csm_lib.generate import REFERENCE_MODEL
    from csm_lib.judges.quality import write_json

    p = argparse.ArgumentParser(description="homographs and pronunciation continuation -> results/pronunciation.json")
    p.add_argument("--systems", default="flite,flite_continuing,csm")
    p.add_argument("--out", default=str(RESULTS / "pronunciation.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    result = run(tuple(a.systems.split(",")))
    result["held_out"] = in_training(items())
    result["measured_with"] = model_record(REFERENCE_MODEL)
    result["provenance"] = provenance("csm_lib.judges.pronunciation", "cpu")
    write_json(result, a.out)
    for name, s in result["systems"].items():
        print(name, {c: (s[c]["score"], s[c]["ci95"], s[c]["n"]) for c in ("homograph", "continuation")})


if __name__ == "__main__":
    main()
