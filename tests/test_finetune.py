"""Fine-tuning the reference on a folder of recordings (csm_lib/finetune.py): full and LoRA, resumable,
a checkpoint that load_generator loads, clear errors for a bad folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csm_lib import checkpoint, finetune
from csm_lib import voice_folder as V
from csm_lib.generate import REFERENCE_MODEL, REFERENCE_TEMPERATURE, load_generator

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["The cat sat on the mat.", "A bird in the hand is worth two in the bush.",
             "She sells sea shells by the sea shore.", "Please open the window.", "It is going to rain today.",
             "We walked along the river.", "Turn left at the second light.", "The soup was too hot to eat."]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Eight clips of festival's ked voice, a voice the reference never heard, in the LJSpeech layout."""
    clips = [(f"ked{i:02d}", s, *V.festival(s)) for i, s in enumerate(SENTENCES)]
    return V.write(tmp_path_factory.mktemp("voice") / "ked", clips)


def run(folder: Path, out: Path, **kw) -> Path:
    """A three-step fine-tune on the folder alone (replay is tested below, on a small corpus)."""
    cfg = finetune.FinetuneConfig(data=str(folder), out=str(out), steps=3, batch=2, group=2, warmup=1,
                                  eval_every=0, ckpt_every=1, log_every=1, threads=1, **{"replay": 0.0} | kw)
    return finetune.finetune(cfg)


def test_full_finetune_writes_a_model_load_generator_loads(folder, tmp_path):
    path = run(folder, tmp_path / "full", mode="full")
    meta = checkpoint.load_meta(path)
    assert meta["steps"] == 3 and meta["finetune"]["mode"] == "full"
    assert meta["base"] == checkpoint.model_record(REFERENCE_MODEL)  # provenance: which model it came from
    assert meta["data"]["n_speakers"] == 3  # the new voice is speaker 2; 0 and 1 keep theirs
    assert meta["finetune_data"]["clips"] == 8 and meta["finetune_data"]["valid_clips"] == 2
    assert [int(r["step"]) for r in meta["history"]] == [0, 1, 2]
    gen = load_generator(path)
    assert gen.temperature == REFERENCE_TEMPERATURE  # the base model's chosen temperature, from the sidecar
    wav = gen.generate("Good morning.", speaker=2, context=[], max_audio_length_ms=400)
    assert wav.dim() == 1
    ref, _ = checkpoint.load(REFERENCE_MODEL)
    new, _ = checkpoint.load(path)
    assert set(new) == set(ref) and not torch.equal(new["audio_embeddings.weight"], ref["audio_embeddings.weight"])


def test_decoder_finetune_moves_only_the_decoder_side_and_the_new_speaker(folder, tmp_path):
    path = run(folder, tmp_path / "decoder")  # the default mode
    meta = checkpoint.load_meta(path)
    assert meta["finetune"]["mode"] == "decoder"
    ref, _ = checkpoint.load(REFERENCE_MODEL)
    new, _ = checkpoint.load(path)
    moved = {k for k in ref if not torch.equal(ref[k].float(), new[k].float())}
    assert moved and all(k.split(".")[0] in finetune.DECODER_SIDE + ("text_embeddings",) for k in moved)
    assert not any(k.startswith(("backbone.", "codebook0_head.", "audio_embeddings.")) for k in moved)  # reads
    rows = (ref["text_embeddings.weight"] != new["text_embeddings.weight"]).any(1).nonzero().flatten().tolist()
    tok = load_generator(path).tokenizer
    assert rows == [tok.speaker_token(2)]  # of the text embeddings only the new speaker's row
    counts = meta["finetune"]["parameters"]
    assert counts["trainable"] == sum(v.numel() for k, v in ref.items() if k.split(".")[0] in finetune.DECODER_SIDE) \
        + ref["text_embeddings.weight"].shape[1]


def test_the_defaults_are_the_fine_tune_chosen_on_the_folders_held_out_clips():
    """bench-finetune judges each ten-minute fine-tune on the folder's held-out clips (not the eval sentences);
    FinetuneConfig's defaults must be the one its rule chooses, recomputed here from the judged numbers."""
    r = json.loads((ROOT / "results/finetune.json").read_text())["selection"]
    judged, bar = r["systems"], r["systems"]["reference_ctx2"]["wer"] + 0.05
    reading = [k for k in ("decoder", "full", "lora", "full_replay") if judged[k]["wer"] <= bar]
    assert r["chosen"] == (max(reading, key=lambda k: judged[k]["sim"]) if reading else
                           min(("decoder", "full", "lora", "full_replay"), key=lambda k: judged[k]["wer"]))
    cfg = finetune.FinetuneConfig()
    assert (cfg.mode, cfg.replay) == (r["chosen_settings"]["mode"], r["chosen_settings"]["replay"])
    assert r["n"] >= 10 and all(s["n"] == r["n"] for s in judged.values())


def test_lora_finetune_moves_only_adapted_weights(folder, tmp_path):
    path = run(folder, tmp_path / "lora", mode="lora", rank=4)
    meta = checkpoint.load_meta(path)
    counts = meta["finetune"]["parameters"]
    assert counts["trainable"] < 0.1 * counts["frozen"]
    ref, _ = checkpoint.load(REFERENCE_MODEL)
    new, _ = checkpoint.load(path)
    assert set(new) == set(ref)  # merged: an ordinary checkpoint
    moved = {k for k in ref if not torch.equal(ref[k].float(), new[k].float())}
    assert moved and all(k.endswith("_proj.weight") or k == "text_embeddings.weight" for k in moved)
    assert "text_embeddings.weight" in moved and any("q_proj" in k for k in moved)


def test_a_stopped_sitting_resumes(folder, tmp_path):
    out = tmp_path / "resume"
    first = run(folder, out, minutes=1e-9)  # stops after its first step
    assert first.name == "state-0000001.safetensors" and (out / "latest").exists()
    assert not (out / "model.safetensors").exists()
    final = run(folder, out)
    meta = checkpoint.load_meta(final)
    assert meta["steps"] == 3 and [int(r["step"]) for r in meta["history"]] == [0, 1, 2]


def test_cli_help_and_a_bad_folder(tmp_path):
    env = {"CSM_PROGRESS": "0", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "csm_lib.finetune", "--help"], cwd=ROOT, capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0 and "--mode" in p.stdout and "lora" in p.stdout
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "csm_lib.finetune", f"--data={tmp_path / 'empty'}",
                        f"--out={tmp_path / 'o'}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "metadata.csv is missing" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "csm_lib.finetune", "--data=x", "--mode=lorax"], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "mode must be one of" in p.stderr


def test_sidecar_is_json_with_the_data_it_read(folder, tmp_path):
    path = run(folder, tmp_path / "side", data_minutes=0.25)
    info = json.loads(path.with_suffix(".json").read_text())["finetune_data"]
    assert info["clips"] < 8 and info["train_minutes"] <= 0.25


def test_the_new_voice_reads_sentences_the_reference_never_heard():
    """Chapter 13's sentences (csm_lib/bench/finetune.py): none in any split of the reference's corpus, the
    eval, voice-print and training parts disjoint."""
    from csm_lib import data
    from csm_lib import sentences as S
    from csm_lib.bench.finetune import EVAL, PRINT, voice_sentences

    cfg = data.corpus_of(checkpoint.load_meta(REFERENCE_MODEL)["train"])
    parts = voice_sentences(cfg)
    assert len(parts["eval"]) == EVAL and len(parts["print"]) == PRINT and len(parts["train"]) > 200
    keys = {name: {S.sentence_key(s) for s in sents} for name, sents in parts.items()}
    assert not (keys["eval"] & keys["print"]) and not (keys["eval"] | keys["print"]) & keys["train"]
    used = [t.text for t in data.plan(cfg)]
    for name, sents in parts.items():
        assert S.overlap(used, sents)["sentences_in_train"] == 0, name


def test_the_final_model_is_the_step_of_the_lowest_validation_loss(folder, tmp_path):
    out = tmp_path / "best"
    cfg = finetune.FinetuneConfig(data=str(folder), out=str(out), steps=3, batch=2, group=2, warmup=1, eval_every=1,
                                  ckpt_every=1, log_every=1, threads=1, lr=3e-3)
    meta = checkpoint.load_meta(finetune.finetune(cfg))
    losses = {e["step"]: e["valid_loss"] for e in meta["evals"]}
    assert sorted(losses) == [0, 1, 2, 3]  # step 0 is the base model
    assert meta["best_step"] == min(losses, key=losses.get) and meta["valid"]["step"] == meta["best_step"]
    best, _ = checkpoint.load(out / "best")
    final, _ = checkpoint.load(out / "model")
    assert all(torch.equal(best[k], final[k]) for k in final)


SMALL_CORPUS = {"hours": 0.1, "corpus_seed": 5, "text": "templates", "unseen_share": 0.0}  # test_train's corpus


def test_replay_draws_whole_conversations_of_the_base_corpus_training_split():
    from csm_lib import data
    from csm_lib.generate import load_codec, tokenizer_path
    from csm_lib.text import load_tokenizer
    meta = checkpoint.load_meta(REFERENCE_MODEL)
    meta = meta | {"train": meta["train"] | SMALL_CORPUS}
    data.build(data.corpus_of(meta["train"]))  # cached
    codec, _ = load_codec(meta["train"]["codec"])
    tok = load_tokenizer(tokenizer_path(REFERENCE_MODEL))
    cfg = finetune.FinetuneConfig(data="unused", replay=0.75)
    turns, info = finetune.replay_turns(cfg, meta, tok, codec, n_folder=10)
    assert len(turns) == info["windows"] >= 30  # replay / (1 - replay) = 3 windows per folder window
    rows = data.load_manifest(data.DEFAULT_ROOT / data.corpus_of(meta["train"]).key())
    by_conv = {}
    for r in rows:
        by_conv.setdefault(r["conversation"], []).append(r)
    convs = {t.conversation for t in turns}
    assert len(convs) == info["conversations"]
    assert all(r["split"] == "train" for c in convs for r in by_conv[c])  # never a held-out conversation
    assert sum(len(by_conv[c]) for c in convs) == len(turns)  # whole conversations
    assert len(turns) - max(len(by_conv[c]) for c in convs) < 30  # and no more than needed
    assert {t.speaker for t in turns} <= {0, 1}  # the voices the base model knew
    again, _ = finetune.replay_turns(cfg, meta, tok, codec, n_folder=10)
    assert [t.row["wav"] for t in again] == [t.row["wav"] for t in turns]  # seeded


def test_replay_without_the_base_corpus_says_how_to_get_it(folder, tmp_path, monkeypatch):
    from csm_lib import data
    monkeypatch.setattr(data, "DEFAULT_ROOT", tmp_path / "no_corpus")
    with pytest.raises(finetune.MissingCorpus, match=r"python -m csm_lib.data --hours 40.*--replay=0"):
        run(folder, tmp_path / "run", replay=0.5)
    assert not (tmp_path / "run" / "latest").exists()  # refused before any training


def test_a_run_folder_resumes_only_its_own_settings(folder, tmp_path):
    run(folder, tmp_path / "run", minutes=1e-9)  # stops after its first step
    with pytest.raises(finetune.OtherRun, match=r"lr=0\.0 there, 0\.01 now"):
        run(folder, tmp_path / "run", lr=0.01)


def test_a_run_folder_of_an_older_version_resumes_and_decoder_mode_refuses_weight_decay(folder, tmp_path):
    out = tmp_path / "old"
    run(folder, out, minutes=1e-9)
    state = out / (out / "latest").read_text().strip()
    meta = json.loads(state.with_suffix(".json").read_text())
    del meta["finetune"]["replay"]  # as a run made before replay existed wrote it
    state.with_suffix(".json").write_text(json.dumps(meta))
    assert checkpoint.load_meta(run(folder, out))["steps"] == 3  # its missing replay reads as 0: resumed
    with pytest.raises(ValueError, match="weight decay"):
        finetune.FinetuneConfig(data=str(folder), mode="decoder", weight_decay=0.1)
