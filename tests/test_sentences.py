"""Real sentences (WordNet), splits that hold out text, the overlap report, phones as text input."""

import pytest

from csm_lib import data
from csm_lib import sentences as S
from csm_lib import text as T


def test_normalise_spells_out_numbers_symbols_and_abbreviations():
    assert S.normalise("it costs $5 or 10% more, e.g. in 1984") == \
        "It costs five dollars or ten percent more, for example in nineteen eighty four."
    assert S.normalise("Mr. Smith came on the 3rd day") == "Mister Smith came on the third day."
    assert S.normalise("he built a long-range rocket; it flew 300 miles") == \
        "He built a long range rocket, it flew three hundred miles."
    assert S.normalise("is it over now?") == "Is it over now?"


@pytest.mark.parametrize("quote", ["they installed a P.A. system", "it rose 2.5 percent yesterday",
                                   "a mold of desiccated snobbery...settles in", "see (above) for more",
                                   "too short", "he said \u00e9t\u00e9 was warm"])
def test_normalise_drops_what_flite_would_not_read_as_written(quote):
    assert S.normalise(quote) is None


def test_number_words():
    assert [S.number_words(n) for n in (0, 13, 40, 99, 105, 1905, 1984, 2000, 2024)] == [
        "zero", "thirteen", "forty", "ninety nine", "one hundred five", "nineteen oh five",
        "nineteen eighty four", "two thousand", "two thousand twenty four"]
    assert [S.ordinal_words(n) for n in (1, 2, 3, 5, 12, 20, 21)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty first"]
    with pytest.raises(ValueError, match="0..9999"):
        S.number_words(10_000)


def test_wordnet_gives_tens_of_thousands_of_distinct_sentences_and_words():
    sents = S.wordnet_sentences()
    assert len(sents) > 30_000
    assert len({S.sentence_key(s) for s in sents}) == len(sents)
    assert len({w for s in sents for w in S.words(s)}) > 20_000
    assert {S.kind(s) for s in sents} == set(S.KINDS)


def test_split_sentences_is_a_partition_and_unseen_words_never_reach_training():
    sents = S.wordnet_sentences()
    parts = S.split_sentences(sents, seed=0)
    assert sum(len(v) for v in parts.values()) == len(sents)
    keys = {name: {S.sentence_key(s) for s in v} for name, v in parts.items()}
    for a in keys:
        for b in keys:
            if a < b:
                assert not keys[a] & keys[b], (a, b)
    train_words = {w for s in parts["train"] for w in S.words(s)}
    assert all(set(S.words(s)) - train_words for s in parts["unseen"])  # each uses a word training lacks
    assert len(parts["unseen"]) > 500 and len(parts["test"]) > 1000


def test_overlap_counts_sentences_turns_and_words():
    train = ["Hello there. How are you?", "I like tea."]
    other = ["hello there!  Where is it?", "I like tea", "Zebras run."]
    o = S.overlap(train, other)
    assert o == {"turns": 3, "turns_in_train": 1, "sentences": 4, "sentences_in_train": 2, "sentence_uses": 4,
                 "sentence_uses_in_train": 2, "words": 10,
                 "words_not_in_train": 5, "train_words": 8}


def _rows(cfg):
    turns = data.plan(cfg)
    return {name: [t.text for t in turns if t.split == name] for name in data.SPLITS}


def test_the_wordnet_corpus_shares_no_sentence_between_training_and_held_out_splits():
    by = _rows(data.CorpusConfig(n_conversations=400, text="wordnet", unseen_share=0.05, seed=3))
    for name in ("valid", "test", "unseen"):
        o = S.overlap(by["train"], by[name])
        assert o["turns"] > 0 and o["sentences_in_train"] == 0 and o["turns_in_train"] == 0, (name, o)
    train_words = {w for t in by["train"] for w in S.words(t)}
    assert all(set(S.words(t)) - train_words for t in by["unseen"])
    assert len(train_words) > 3_000


def test_the_template_corpus_repeats_its_training_sentences():
    """Why the wordnet corpus exists: held-out template conversations mostly repeat training text."""
    by = _rows(data.CorpusConfig.for_hours(40, seed=2))  # the first reference model's corpus
    o = S.overlap(by["train"], by["test"])
    assert o["sentences_in_train"] > 0.8 * o["sentences"] and o["sentence_uses_in_train"] > 0.9 * o["sentence_uses"]
    assert not by["unseen"]


def test_older_corpora_keep_their_cache_keys():
    assert data.CorpusConfig.for_hours(1).key() == "v2-n105-255f1d3065"
    assert data.CorpusConfig.for_hours(40, seed=2).key() == "v2-n4174-3e01bd6f28"
    assert data.CorpusConfig.for_hours(1, text="wordnet").key() != data.CorpusConfig.for_hours(1).key()


def test_corpus_config_refuses_unseen_share_without_wordnet():
    with pytest.raises(ValueError, match="unseen_share"):
        data.CorpusConfig(unseen_share=0.1)
    with pytest.raises(ValueError, match="text must be one of"):
        data.CorpusConfig(text="shakespeare")


def test_phonemize_gives_flite_phones_with_word_boundaries_and_punctuation():
    phones = T.phonemize("Hi, Bob.")
    assert phones == ["hh", "ay1", ",", "|", "b", "aa1", "b", "."]
    assert T.phonemize("It's 5 o'clock!").count("|") == 2


def test_phone_tokenizer_keeps_the_speaker_layout_and_round_trips(tmp_path):
    tok = T.PhoneTokenizer.train(["Hello there, my friend.", "What time is it?"])
    ids = tok.encode("What is it, my friend?", 1)
    assert ids[0] == tok.bos_id and ids[1] == tok.speaker_token(1) and ids[-1] == tok.eos_id
    assert tok.decode(ids).startswith("[1]w ")
    again = T.load_tokenizer(tok.save(tmp_path / "phones.json"))
    assert isinstance(again, T.PhoneTokenizer) and again.encode("What is it, my friend?", 1) == ids
    assert tok.encode("Zebras?", 0)[2:-1].count(tok.ids[T.UNK]) > 0  # phones it never met are <unk>
    with pytest.raises(ValueError, match="needs words"):
        tok.encode(" ?! ", 0)
