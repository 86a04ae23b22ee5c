import pytest

from csm_lib.text import TextTokenizer

TEXTS = ["Hello there, how was your weekend?", "I spent most of the weekend at the lake."] * 20


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(TEXTS, vocab_size=300)


def test_encode_decode_roundtrip_with_speaker_prefix(tok):
    ids = tok.encode("How was the lake, really?", speaker=1)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[1] == tok.speaker_token(1)
    assert tok.decode(ids) == "[1]How was the lake, really?"


def test_unseen_characters_still_encode(tok):
    assert tok.decode(tok.encode("Zürich ☕", speaker=0)) == "[0]Zürich ☕"


def test_merges_shorten_sequences():
    chars = TextTokenizer.train(TEXTS, vocab_size=0)
    bpe = TextTokenizer.train(TEXTS, vocab_size=300)
    text = "I spent most of the weekend at the lake."
    assert len(chars.encode(text, 0)) == len(text.encode()) + 3  # bytes + bos, speaker, eos
    assert len(bpe.encode(text, 0)) < len(chars.encode(text, 0)) / 2


def test_save_load(tmp_path, tok):
    again = TextTokenizer.load(tok.save(tmp_path / "tok.json"))
    assert again.encode("Hello there", 0) == tok.encode("Hello there", 0)


def test_bad_input(tok, tmp_path):
    with pytest.raises(ValueError, match="speaker id must be in 0..7"):
        tok.encode("hi", speaker=9)
    with pytest.raises(ValueError, match="empty text"):
        tok.encode("   ", speaker=0)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        TextTokenizer.load(tmp_path / "nope.json")


def test_lexicon_is_bounded_and_evicts_the_least_recently_used(monkeypatch):
    """The phone lexicon keeps at most ``max_words`` words; an evicted word is looked up again when it
    comes back, and a text's own words are never evicted while it is phonemised."""
    import csm_lib.text as T

    calls: list[list[str]] = []

    def fake_t2p(words: list[str]) -> list[list[str]]:  # one "phone" per word: the word itself
        calls.append(list(words))
        return [[w] for w in words]

    monkeypatch.setattr(T, "_t2p", fake_t2p)
    monkeypatch.setattr(T, "_LEXICON", T.Lexicon(max_words=4))
    T.learn(["alpha beta gamma"])
    assert calls == [["alpha", "beta", "gamma"]]  # one batch for the new words
    T.learn(["alpha delta epsilon"])  # alpha is used again: beta, the oldest, leaves
    assert calls[-1] == ["delta", "epsilon"] and list(T._LEXICON) == ["gamma", "alpha", "delta", "epsilon"]
    assert T.phonemize("Beta, alpha.") == ["beta", ",", "|", "alpha", "."]  # beta looked up again, then kept
    assert calls[-1] == ["beta"] and len(T._LEXICON) == 4 and "gamma" not in T._LEXICON
    for i in range(50):
        T.phonemize(f"word{i} other{i}")
    assert len(T._LEXICON) == 4
