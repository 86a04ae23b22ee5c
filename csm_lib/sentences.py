"""Real English sentences for the corpus, and splits that hold out text, not just conversations.

Source: the example sentences of WordNet 3.0 (Debian package ``wordnet-base``, Princeton's
WordNet licence: free to use, copy and redistribute with its copyright notice). Each synset's gloss
quotes usage examples in double quotes (``"the tennis fathers ruled in her favor"``): 48k quotes,
written by lexicographers, with about 30k distinct words.

Cleaning (``normalise``) keeps what flite reads the way the text says:

* numbers become words (``7`` -> ``seven``, ``1984`` -> ``nineteen eighty four``, ``3rd`` -> ``third``);
  ``%``, ``&`` and ``$5`` become ``percent``, ``and``, ``five dollars``;
* a few abbreviations are spelt out (``Mr.`` -> ``Mister``, ``e.g.`` -> ``for example``); a sentence
  that still holds an acronym with dots (``P.A.``), a decimal, an ellipsis, brackets, quotes or any
  other symbol is dropped;
* hyphens become spaces, ``;`` and ``:`` commas; the first letter is capitalised and a full stop
  added where the quote had no final punctuation; 4 to 25 words are kept.

A sentence's identity (``sentence_key``) is its lower-cased words: two quotes that differ only in
case or punctuation are one sentence, and ``split_sentences`` puts each sentence in exactly one
split. ``overlap`` counts what two sets of turns share (sentences, turns, words); the corpus's
held-out splits share no sentence with its training split, and its ``unseen`` split uses words
that never occur in training at all.

Explained in chapter 01 (``notebooks/01_data.ipynb``).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
MIN_WORDS, MAX_WORDS = 4, 25
KINDS = ("question", "short", "long")  # how a sentence may serve in a conversation (dialogue.py)
SHORT_WORDS = 6  # a statement of at most this many words can acknowledge or close a turn

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}
ABBREVIATIONS = {"Mr.": "Mister", "Mrs.": "Missus", "Dr.": "Doctor", "St.": "Saint", "Mt.": "Mount",
                 "e.g.": "for example", "i.e.": "that is", "etc.": "et cetera", "vs.": "versus",
                 "U.S.": "United States", "Jr.": "Junior", "Sr.": "Senior"}


def number_words(n: int) -> str:
    """``n`` (0..9999) in words; four-digit numbers from 1100 to 1999 read as years."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number_words handles 0..9999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if 1100 <= n <= 1999 and n % 100:  # 1984: nineteen eighty four
        return number_words(n // 100) + " " + (("oh " + ONES[n % 100]) if n % 100 < 10 else number_words(n % 100))
    if n < 1000:
        rest = n % 100
        return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def ordinal_words(n: int) -> str:
    """``3`` -> ``third``, ``21`` -> ``twenty first``."""
    words = number_words(n).split()
    last = words[-1]
    last = ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words[:-1] + [last])


def _numbers(text: str) -> str:
    text = re.sub(r"\$(\d+)\b", lambda m: m.group(1) + " dollars", text)
    text = re.sub(r"\b(\d{1,4})(st|nd|rd|th)\b", lambda m: ordinal_words(int(m.group(1))), text)
    text = re.sub(r"(?<![\d.,])(\d{1,4})(?![\d.,]\d)", lambda m: number_words(int(m.group(1))), text)
    return text.replace("%", " percent").replace("&", " and ")


def normalise(quote: str) -> str | None:
    """A WordNet quote as a sentence flite reads as written, or None if it cannot be (module docstring)."""
    s = " ".join(quote.split())
    for short, full in ABBREVIATIONS.items():
        s = s.replace(short, full)
    if "..." in s or re.search(r"\d[.,]\d|\w\.\w", s):  # ellipsis, decimals/thousands, acronyms with dots
        return None
    s = _numbers(s)
    s = re.sub(r"\s*[;:]\s*", ", ", s).replace("-", " ")
    s = " ".join(s.split()).strip(" ,")
    if not s or re.search(r"[^A-Za-z ,.'?!]", s) or re.search(r"[.?!].", s):  # symbols, two sentences
        return None
    if s[-1] not in ".?!":
        s += "."
    n = len(words(s))
    if not MIN_WORDS <= n <= MAX_WORDS:
        return None
    return s[0].upper() + s[1:]


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and apostrophes)."""
    return re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower())


def sentence_key(sentence: str) -> str:
    """What makes two sentences the same sentence: their words, lower case."""
    return " ".join(words(sentence))


def split_into_sentences(text: str) -> list[str]:
    """The sentences of a turn: cut after ``.``, ``?`` or ``!``."""
    return [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]


def kind(sentence: str) -> str:
    """``question``, ``short`` (an acknowledgement-sized statement) or ``long``."""
    if sentence.endswith("?"):
        return "question"
    return "short" if len(words(sentence)) <= SHORT_WORDS else "long"


@lru_cache(maxsize=2)
def wordnet_sentences(root: str = str(WORDNET)) -> tuple[str, ...]:
    """Every usable WordNet example sentence, cleaned, one per ``sentence_key``, in a fixed order."""
    folder = Path(root)
    missing = [f for f in POS_FILES if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"WordNet's data files {missing} are not in {folder}: install them with "
                                f"`apt-get install wordnet-base` (Debian/Ubuntu), or run `make setup`")
    seen: dict[str, str] = {}
    for name in POS_FILES:
        for line in (folder / name).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header; synsets without a gloss
                continue
            for quote in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]):
                s = normalise(quote)
                if s is not None:
                    seen.setdefault(sentence_key(s), s)
    return tuple(seen[k] for k in sorted(seen))


def split_sentences(sentences: Iterable[str], seed: int, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                    unseen_words: float = 0.03, common: int = 3000) -> dict[str, list[str]]:
    """Each sentence into one of ``train``, ``valid``, ``test``, ``unseen``.

    ``unseen``: a random ``unseen_words`` share of the words outside the ``common`` most frequent
    ones is held out, and every sentence using one of them goes to ``unseen`` (so no training
    sentence uses them). The other sentences are shuffled and cut by ``fractions``.
    """
    sentences = list(sentences)
    rng = random.Random(seed)
    counts = Counter(w for s in sentences for w in set(words(s)))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    rare = ranked[common:]
    held = set(rng.sample(rare, round(unseen_words * len(rare))))
    out: dict[str, list[str]] = {"train": [], "valid": [], "test": [], "unseen": []}
    rest = []
    for s in sentences:
        (out["unseen"] if held & set(words(s)) else rest).append(s)
    rng.shuffle(rest)
    n_valid, n_test = (round(f * len(rest)) for f in fractions[1:])
    out["valid"], out["test"], out["train"] = rest[:n_valid], rest[n_valid:n_valid + n_test], rest[n_valid + n_test:]
    return out


def overlap(train_texts: Iterable[str], other_texts: Iterable[str]) -> dict:
    """What the turns ``other_texts`` share with the turns ``train_texts``.

    Counts, over ``other_texts``: its turns found verbatim (as word sequences) in training; its
    distinct sentences, and its sentence uses (a sentence said twice counts twice), found in
    training; its distinct words never seen in training.
    """
    train_texts, other_texts = list(train_texts), list(other_texts)
    train_turns = {sentence_key(t) for t in train_texts}
    train_sents = {sentence_key(s) for t in train_texts for s in split_into_sentences(t)}
    train_words = {w for t in train_texts for w in words(t)}
    uses = [sentence_key(s) for t in other_texts for s in split_into_sentences(t)]
    sents = set(uses)
    vocab = {w for t in other_texts for w in words(t)}
    return {"turns": len(other_texts), "turns_in_train": sum(sentence_key(t) in train_turns for t in other_texts),
            "sentences": len(sents), "sentences_in_train": len(sents & train_sents),
            "sentence_uses": len(uses), "sentence_uses_in_train": sum(u in train_sents for u in uses),
            "words": len(vocab), "words_not_in_train": len(vocab - train_words),
            "train_words": len(train_words)}
