"""Chapter 10's pronunciation checks: the forced-choice judge hears which pronunciation flite was made to
say, the conversations are balanced so that ignoring the context scores one half, and the summaries count
conversations, not samples."""

import pytest

from csm_lib import text
from csm_lib.judges import pronunciation as P


@pytest.fixture(scope="module")
def judge():
    return P.ForcedChoice()


def test_conversations_are_balanced_between_readings():
    its = P.items()
    for check in ("homograph", "continuation"):
        rights = [(it.word, it.right) for it in its if it.check == check]
        for word in {w for w, _ in rights}:
            counts = [sum(1 for w, r in rights if w == word and r == reading)
                      for reading in (P.READINGS | P.VARIANTS)[word]]
            assert len(counts) == 2 and counts[0] == counts[1] >= 3, (word, counts)
    cont = [it for it in its if it.check == "continuation"]
    assert all(it.context[0][1] != it.context[0][2] or it.right == it.lexicon for it in cont)  # respelt


def test_the_front_end_gives_one_reading_per_spelling():
    """What the model reads: the same phones for "read" in the present and the past (the premise of the check)."""
    a = text.phonemize("I will read the letter tonight.")
    b = text.phonemize("Yesterday she read the whole report.")
    read = ["r", "eh1", "d"]
    assert any(a[i:i + 3] == read for i in range(len(a))) and any(b[i:i + 3] == read for i in range(len(b)))


def test_respell_keeps_case_and_whole_words():
    assert P.respell("Data first, then the data.", "data", "datta") == "Datta first, then the datta."
    assert P.respell("The breadth of it.", "read", "red") == "The breadth of it."


@pytest.mark.parametrize("word,sentence", [("read", "They like to read before bed."),
                                           ("lead", "These stairs lead to the roof."),
                                           ("route", "That route is prettier anyway.")])
def test_judge_hears_the_pronunciation_flite_was_made_to_say(judge, word, sentence):
    table = (P.READINGS | P.VARIANTS)[word]
    options = {k: v[0] for k, v in table.items()}
    for reading, (_, spelling) in table.items():
        x, sr = P.flite(P.respell(sentence, word, spelling), 0)
        assert judge(x, sr, sentence, word, options) == reading, (sentence, reading)


def test_judge_refuses_words_it_cannot_align(judge):
    with pytest.raises(ValueError, match="not in pocketsphinx's dictionary"):
        judge([0.0] * 16000, 16000, "The zorblax can read.", "read", {"a": ("R IY D",), "b": ("R EH D",)})


def test_summary_resamples_conversations_with_their_seeds():
    recs = [{"item": k // 2, "right": "a", "lexicon": "a", "heard": "a" if k % 4 < 2 else "b"} for k in range(40)]
    s = P.summarize(recs)
    assert s["n"] == 40 and s["n_items"] == 20 and s["score"] == 0.5 and s["lexicon_share"] == 0.5
    lo, hi = s["ci95"]
    assert 0.2 < lo < 0.5 < hi < 0.8
