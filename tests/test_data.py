import json
import random
import re
from collections import defaultdict

import pytest

from csm_lib import audio as A
from csm_lib import data as D
from csm_lib.dialogue import count_distinct_sentences, make_dialogue


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match=r"unknown flite voice.*choose from"):
        D.CorpusConfig(voices=("awb", "kal"))
    with pytest.raises(ValueError, match="n_conversations must be at least 3"):
        D.CorpusConfig(n_conversations=1)
    with pytest.raises(ValueError, match="min_turns"):
        D.CorpusConfig(min_turns=5, max_turns=3)
    with pytest.raises(ValueError, match="hours must be positive"):
        D.CorpusConfig.for_hours(0)
    with pytest.raises(ValueError, match="at least 2 distinct voices"):
        D.CorpusConfig(voices=("slt", "slt"))


def test_missing_flite_is_explained(monkeypatch):
    monkeypatch.setattr(D.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install flite"):
        D.synthesize("hello", "awb")


def test_thousands_of_distinct_sentences():
    assert count_distinct_sentences() >= 2000
    rng = random.Random(0)
    seen = {s for _ in range(300) for turn in make_dialogue(rng, 8)[1] for s in re.split(r"(?<=[.?!]) ", turn)}
    assert len(seen) > 500


def test_plan_styles_are_per_speaker_per_conversation_and_hidden():
    cfg = D.CorpusConfig(n_conversations=40)
    turns = D.plan(cfg)
    assert D.plan(cfg) == turns  # deterministic
    by_conv = defaultdict(list)
    for t in turns:
        by_conv[t.conversation].append(t)
    styles = []
    for conv in by_conv.values():
        assert [t.turn for t in conv] == list(range(len(conv)))
        assert cfg.min_turns <= len(conv) <= cfg.max_turns
        assert [t.speaker for t in conv] == [i % 2 for i in range(len(conv))]  # turn-taking
        for spk in (0, 1):
            mine = [t for t in conv if t.speaker == spk]
            assert len({t.style for t in mine}) == 1 and len({t.voice for t in mine}) == 1
            styles.append(mine[0].style)
        assert conv[0].voice != conv[1].voice
        assert len({t.split for t in conv}) == 1
    assert len(set(styles)) == len(styles)  # every speaker of every conversation has its own style
    for t in turns:  # the style is never written in the text
        assert not re.search(r"\d", t.text) and str(t.style.f0_mean) not in t.text
    splits = {t.split for t in turns}
    assert splits == {"train", "valid", "test"}


def test_build_small_corpus_and_cache(tmp_path, monkeypatch):
    cfg = D.CorpusConfig(n_conversations=3, min_turns=2, max_turns=3, seed=7)
    folder = D.build(cfg, root=tmp_path, workers=2)
    rows = D.load_manifest(folder)
    assert rows and {r["split"] for r in rows} == {"train", "valid", "test"}
    for r in rows:
        x, sr = A.load(r["wav"], sr=None)
        assert sr == 16_000 and abs(len(x) / sr - r["duration"]) < 1e-3 and r["duration"] > 1.0
        assert abs(A.rms_db(x) - (-23.0)) < 1.0  # loudness-normalised
        assert set(r) >= {"conversation", "turn", "speaker", "voice", "style", "text", "wav", "duration"}
    info = json.loads((folder / "info.json").read_text())
    assert info["turns"] == len(rows) and info["realtime_factor"] > 0
    # a second build with the same parameters is a cache hit: nothing is synthesised again
    monkeypatch.setattr(D, "_render", lambda job: pytest.fail("cache miss"))
    assert D.build(cfg, root=tmp_path) == folder
    with pytest.raises(ValueError, match="unknown split"):
        D.load_manifest(folder, "dev")
    with pytest.raises(FileNotFoundError, match="build it with"):
        D.load_manifest(tmp_path / "nothing")


def test_cache_key_changes_with_parameters():
    assert D.CorpusConfig(seed=1).key() != D.CorpusConfig(seed=2).key()
    assert D.CorpusConfig(stretch=(0.9, 1.1)).key() != D.CorpusConfig().key()
