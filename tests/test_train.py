"""The CSM training loop: data path, resume after SIGKILL, gradient accumulation and 2-rank DDP."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from csm_lib import checkpoint
from csm_lib.dataset import ConversationWindows
from csm_lib.train import TrainConfig, load_data, read_log

ROOT = Path(__file__).resolve().parents[1]
# a small corpus of its own (about 6 minutes), the shipped codec, the tiny model
BASE = ["--preset=tiny", "--hours=0.1", "--corpus_seed=5", "--batch=4", "--max_len=192", "--eval_every=0",
        "--log_every=1", "--threads=1", "--lr=3e-3", "--warmup=2"]


def run(out: Path, *args: str, launcher: list[str] | None = None, wait: bool = True):
    cmd = [*(launcher or [sys.executable, "-m"]), "csm_lib.train", *BASE, f"--out={out}", *args]
    env = os.environ | {"CSM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def losses(out: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in read_log(out / "log.csv", 10**9)}


@pytest.fixture(scope="module")
def windows():
    cfg = TrainConfig(preset="tiny", hours=0.1, corpus_seed=5, max_len=192)
    train_w, valid_w, mcfg, info = load_data(cfg)
    return train_w, mcfg, info


def test_windows_are_whole_turns_within_max_len(windows):
    w, mcfg, info = windows
    K = mcfg.n_codebooks
    assert info["train_windows"] == len(w) > 20
    for i in range(len(w)):
        frames, mask = w.window(i)
        assert len(frames) <= w.max_len and frames.shape[1] == K + 1
        assert ((mask[:, :K].all(-1)) ^ mask[:, K]).all()  # each position text only or audio only
    c, start = w.starts[0]
    first = w.conversations[c][start]
    assert torch.equal(w.window(0)[0][: len(first.frames)], first.frames)
    assert w.step_indices(7, 4, seed=0) == w.step_indices(7, 4, seed=0) != w.step_indices(8, 4, seed=0)
    frames, mask = w.batch([0, 1, 2])
    assert frames.shape[0] == 3 and not mask[0, len(w.window(0)[0]):].any()


def test_a_turn_longer_than_the_window_is_cut(windows):
    w, _, _ = windows
    short = ConversationWindows([t for conv in w.conversations for t in conv], max_len=40)
    assert max(len(short.window(i)[0]) for i in range(len(short))) == 40


def test_resume_after_sigkill_gives_the_same_loss_curve(tmp_path):
    steps = ["--steps=14", "--ckpt_every=4", "--eval_every=5", "--eval_batches=1"]
    run(tmp_path / "straight", *steps)
    killed = tmp_path / "killed"
    p = run(killed, *steps, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and max(losses(killed), default=-1) < 9:
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert (killed / "latest").exists() and not (killed / "model.safetensors").exists()
    resumed_from = int((killed / "latest").read_text().split("-")[1].split(".")[0])
    assert 4 <= resumed_from < 14
    run(killed, *steps, "--resume=true")
    a, b = losses(tmp_path / "straight"), losses(killed)
    assert sorted(a) == sorted(b) == list(range(14))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-5), s
    wa, ma = checkpoint.load(tmp_path / "straight" / "model.safetensors")
    wb, mb = checkpoint.load(killed / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    # the evaluations before the kill are kept, none twice
    assert [e["step"] for e in mb["evals"]] == [e["step"] for e in ma["evals"]] == [5, 10, 14]
    assert [e["valid_loss"] for e in mb["evals"]] == pytest.approx([e["valid_loss"] for e in ma["evals"]], rel=1e-4)


def _final_weights(out: Path) -> dict:
    return checkpoint.load(out / "model.safetensors")[0]


def test_ddp_two_ranks_and_accumulation_match_one_big_batch(tmp_path):
    """Same global batch of 4 windows: 1 process, 1 process with 2 micro-batches, 2 gloo ranks."""
    same = ["--steps=3", "--amp=fp32", "--decoder_fraction=1.0", "--ckpt_every=100"]
    run(tmp_path / "one", *same)
    run(tmp_path / "accum", *same, "--accum=2")
    run(tmp_path / "ddp", *same, launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                           "--master_port=29533", "-m"])
    ref = _final_weights(tmp_path / "one")
    before = losses(tmp_path / "one")
    for other in ("accum", "ddp"):
        w = _final_weights(tmp_path / other)
        worst = max((w[k] - ref[k]).abs().max().item() for k in ref)
        assert worst < 1e-5, (other, worst)
        assert losses(tmp_path / other) == pytest.approx(before, rel=1e-5)
    assert before[2] < before[0]  # and they learn: the loss falls over the 3 steps


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="multiple of accum"):
        TrainConfig(batch=6, accum=4)
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig(preset="huge")


def test_judged_generations_come_from_the_judge_given_to_train(tmp_path, monkeypatch):
    """train does not import evaluate: judge_turns needs a judge passed in, and its metrics are logged."""
    from csm_lib.generate import REFERENCE_CODEC, load_generator
    from csm_lib.train import train

    monkeypatch.setenv("CSM_PROGRESS", "0")
    cfg = TrainConfig(preset="tiny", hours=0.1, corpus_seed=5, batch=4, max_len=192, steps=2, eval_every=2,
                      eval_batches=1, judge_turns=3, ckpt_every=100, threads=1, codec=str(REFERENCE_CODEC),
                      out=str(tmp_path / "j"))
    with pytest.raises(ValueError, match="judge_turns=3 needs a judge"):
        train(cfg)
    calls = []

    def judge(model, t):
        calls.append(t["judge_turns"])
        return {"valid_wer": 0.5}

    path = train(cfg, judge=judge)
    assert calls == [3]
    _, meta = checkpoint.load(path)
    assert meta["evals"][-1]["valid_wer"] == 0.5 and meta["data"]["n_speakers"] == 2
    gen = load_generator(path)  # the codec it was trained with: the shipped one, the default
    assert (gen.n_speakers, gen.trained_len) == (2, 192)


def test_read_log_skips_a_torn_line(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,lr,loss,c0_loss,decoder_loss,positions_per_s,seconds\n0,1,2,1,1,5,0.1\n1,1,2,1,1,5,0.2\n2,1,2")
    assert [r["step"] for r in read_log(log, 10)] == ["0", "1"]
    assert [r["step"] for r in read_log(log, 1)] == ["0"]


def test_evaluate_runs_end_to_end_on_a_trained_tiny_model(tmp_path):
    """The reference-model evaluation on a (barely) trained tiny model: structure and ground truth."""
    from csm_lib.judges.evaluate import LAYOUTS, evaluate, held_out_targets, probe

    run(tmp_path / "m", "--steps=2", "--ckpt_every=100")
    assert (tmp_path / "m" / "model.tokenizer.json").exists()
    result = evaluate(tmp_path / "m" / "model.safetensors", max_turns=2, max_audio_length_ms=1600, split="train")
    assert result["turns"] == 2
    for name in ("with_context", "without_context"):
        r = result[name]
        assert r["seconds_mean"] <= 1.6 and 0 <= r["sim"] <= 1 and r["wer"] >= 0
    gt = result["ground_truth"]
    assert gt["wer"] < 0.5 and gt["sim"] > 0.7  # the corpus audio is judged as speech of that speaker
    other = evaluate(tmp_path / "m" / "model.safetensors", max_turns=1, max_audio_length_ms=800, hours=0.1,
                     corpus_seed=6)  # the held-out turns of another corpus, through the model's own tokenizer
    assert other["turns"] == 1 and other["corpus"] != result["corpus"]
    assert other["with_context"]["style_error"] is None  # no spread to measure it in from one turn
    assert all(result[n]["style_error"] >= 0 for n in ("with_context", "without_context"))
    probed = probe(tmp_path / "m" / "model.safetensors", n_windows=4)
    for part in ("train", "train_text_scrambled", "valid"):
        assert all(v > 0 for v in probed[part].values())
    laid = evaluate(tmp_path / "m" / "model.safetensors", max_turns=2, max_audio_length_ms=800, split="train",
                    layouts=LAYOUTS)  # the same turns with their context laid out four ways
    assert set(laid["layouts"]) == set(LAYOUTS) and laid["layouts"]["corpus"]["wer"] == laid["with_context"]["wer"]
    assert all(len(s["per_turn"]["edits"]) == 2 for s in laid["layouts"].values())
    rows = [{"conversation": c, "turn": t} for c in "ab" for t in range(4)]
    picked = held_out_targets(rows, 3)
    assert [(r["conversation"], r["turn"], len(e)) for r, e in picked] == [("a", 2, 2), ("b", 2, 2), ("a", 3, 3)]


def test_cached_npz_computes_once_and_again_when_keys_are_missing(tmp_path):
    import numpy as np

    calls = []

    def compute(n):
        calls.append(n)
        return {f"k{i}": np.full(3, i) for i in range(n)}

    cache = tmp_path / "c.npz"
    assert list(checkpoint.cached_npz(cache, ["k0", "k1"], lambda: compute(2))) == ["k0", "k1"]
    assert checkpoint.cached_npz(cache, ["k1"], lambda: compute(9))["k1"].tolist() == [1, 1, 1]
    assert calls == [2]  # the second call read the cache
    assert len(checkpoint.cached_npz(cache, ["k2"], lambda: compute(3))) == 3 and calls == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temporary file left behind


def test_make_model_continues_from_a_committed_model_and_reads_phones(tmp_path):
    """`make model`'s resumable recipe: a run stopped by --minutes, committed, continued after runs/ is gone."""
    import shutil

    from csm_lib.judges.evaluate import evaluate, sweep_temperature
    from csm_lib.train import resolve_start

    recipe = ["--steps=5", "--ckpt_every=100", "--text_input=phones"]
    run(tmp_path / "first", *recipe, "--minutes=0.0001")  # stops (and saves) after its first step
    committed = tmp_path / "checkpoints"
    committed.mkdir()
    for name in ("model.safetensors", "model.json", "model.tokenizer.json"):
        shutil.copy(tmp_path / "first" / name, committed / name)
    shutil.rmtree(tmp_path / "first")
    assert checkpoint.load(committed / "model.safetensors")[1]["steps"] == 1
    out = tmp_path / "again"
    run(out, *recipe, f"--continue_from={committed / 'model.safetensors'}")
    _, meta = checkpoint.load(out / "model.safetensors")
    assert meta["steps"] == 5 and meta["train"]["init"] == str(committed / "model.safetensors")
    assert sorted(losses(out)) == list(range(5))  # the committed run's first step, then steps 1-4
    same = dict(preset="tiny", hours=0.1, corpus_seed=5, batch=4, max_len=192, lr=3e-3, warmup=2, steps=5,
                text_input="phones", continue_from=str(committed / "model.safetensors"))
    assert resolve_start(TrainConfig(**same, out=str(out))).resume  # a state in out: resume it
    fresh = resolve_start(TrainConfig(**same, out=str(tmp_path / "fresh")))  # none: init from the committed model
    assert not fresh.resume and fresh.init == same["continue_from"]
    assert resolve_start(TrainConfig(out=str(tmp_path / "none"), continue_from=str(committed / "model.safetensors"),
                                     lr=1.0)) == TrainConfig(out=str(tmp_path / "none"), lr=1.0)  # another recipe
    # a later stage of a recipe (--after): starts from the earlier stage once it has finished, never afresh
    later = dict(out=str(tmp_path / "later"), continue_from=str(committed / "model.safetensors"), lr=1.0)
    with pytest.raises(SystemExit, match="1 of 5 steps"):  # the committed run stopped after its first step
        resolve_start(TrainConfig(**later, after=str(committed / "model.safetensors")))
    stage = resolve_start(TrainConfig(**later, after=str(out / "model.safetensors")))
    assert stage.init == str(out / "model.safetensors") and not stage.resume and not stage.after
    result = evaluate(out / "model.safetensors", max_turns=2, max_audio_length_ms=800, split="train")
    assert result["text_input"] == "phones" and result["overlap_with_train"]["turns"] == 2
    # the result names the weights it judged: trained on, the model is another (benchmarks keep the same record)
    assert result["measured_with"] == {"path": str(out / "model.safetensors"), "steps": 5,
                                       "fingerprint": checkpoint.fingerprint(out / "model.safetensors")}
    assert checkpoint.model_record(committed / "model.safetensors")["fingerprint"] != \
        result["measured_with"]["fingerprint"]
    for name in ("with_context", "without_context"):
        r = result[name]
        assert 0 <= r["ended_by_eos"] <= 1 and r["wer_ci95"][0] <= r["wer"] <= r["wer_ci95"][1]
        assert r["cer"] >= 0 and r["duration_ratio_median"] > 0
    # the temperature is chosen on turns of another split than the one reported: lowest WER among those that end
    sweep = sweep_temperature(out / "model.safetensors", (0.5, 0.9), turns=2, split="train")
    rows = sweep["temperatures"]
    assert set(rows) == {"0.5", "0.9"} and sweep["turns"] == 2 and sweep["measured_with"] == result["measured_with"]
    ending = [k for k, r in rows.items() if r["ended_by_eos"] >= 0.95] or list(rows)
    assert str(sweep["chosen"]) in ending and all(rows[str(sweep["chosen"])]["wer"] <= rows[k]["wer"] for k in ending)


def test_total_seconds_adds_up_the_sittings_of_a_resumed_run():
    from csm_lib.train import total_seconds

    rows = [{"seconds": s} for s in ("1.0", "5.0", "9.0", "2.0", "6.0", "0.5", "3.0")]
    assert total_seconds(rows) == 9.0 + 6.0 + 3.0 and total_seconds([]) == 0.0


def test_stage_losses_reads_the_loss_training_reports(windows):
    """``evaluate.c0_loss`` (make model's stages compared on the same windows) is training's own codebook-0 loss."""
    from csm_lib.judges.evaluate import c0_loss
    from csm_lib.model import CSM
    from csm_lib.train import evaluate

    w, mcfg, _ = windows
    torch.manual_seed(0)
    model = CSM(mcfg).eval()
    cfg = TrainConfig(preset="tiny", batch=4, eval_batches=2)
    assert c0_loss(model, w, 8, batch=3) == pytest.approx(evaluate(model, w, cfg, torch.device("cpu"))["valid_c0_loss"],
                                                          abs=2e-4)


def test_make_model_422m_recipe_runs_two_steps_on_the_cpu(tmp_path):
    """``make model-422m``'s own options (read from the Makefile), with only what a CPU cannot do overridden:
    the device, CUDA's fused AdamW and its allocator cap; a small corpus, two steps of shorter windows."""
    recipe = subprocess.run(["make", "-s", "--eval", "print-%: ; @echo $($*)", "print-MODEL_422M_RECIPE"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert {"--preset=paper_422m", "--checkpointing=true", "--fused_adam=true", "--amp=bf16",
            "--memory_cap_gb=7.5"} <= set(recipe)
    cpu = ["--device=cpu", "--fused_adam=false", "--memory_cap_gb=0", "--hours=0.1", "--corpus_seed=5",
           "--text=templates", "--unseen_share=0", "--steps=2", "--batch=2", f"--accum={2}", "--max_len=192",
           "--eval_every=0", "--log_every=1", "--threads=2", f"--out={tmp_path}", "--continue_from="]
    env = os.environ | {"CSM_PROGRESS": "0"}
    free_gb = shutil.disk_usage(tmp_path).free / 2**30
    if free_gb < 8:  # a full disk would fail the run half-way with an error that names no cause
        pytest.skip(f"the 422M recipe writes about 7 GB of state; {tmp_path} has {free_gb:.1f} GB free (8 needed)")
    try:  # the run writes about 7 GB (a state with AdamW's moments, the model): removed at once, not left to pytest
        p = subprocess.run([sys.executable, "-m", "csm_lib.train", *recipe, *cpu], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        meta = checkpoint.load_meta(tmp_path / "model.safetensors")
        assert meta["steps"] == 2 and meta["train"]["checkpointing"] and meta["train"]["amp"] == "bf16"
        assert meta["config"]["backbone"]["dim"] == 1024 and meta["config"]["backbone"]["n_layers"] == 25
        assert all(torch.isfinite(torch.tensor(list(losses(tmp_path).values()))))
    finally:
        for f in tmp_path.glob("*.safetensors"):
            f.unlink()
    with pytest.raises(ValueError, match="fused_adam needs a CUDA device"):  # no silent CPU fallback
        TrainConfig(fused_adam=True, device="cpu")
    with pytest.raises(ValueError, match="memory_cap_gb caps one"):
        TrainConfig(memory_cap_gb=7.5, device="cpu")
    with pytest.raises(ValueError, match="memory_cap_gb must be 0"):
        TrainConfig(memory_cap_gb=-1, device="cuda")
