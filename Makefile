SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

.PHONY: venv flite setup corpus corpus-bench judges-baseline codec codec-eval model model-stages-1-3 model-eval text-inputs alignment-study budget-gpu model-422m results results-list results-other workbook test lab lint clean-data \
	bench bench-kv-cache bench-amortization bench-context-cost bench-training-knobs bench-inference test-portable parity \
	baselines bench-latency bench-loop serve bench-serve screenshot model-stage3 model-stage4 model-ship finetune bench-finetune quality-judges seed-variants bench-quality bench-pronunciation

## venv: create .venv (if missing) and install the project + dev extras (torch pulls CUDA wheels, ~4 GB)
venv: $(STAMP)

# notebooks run on the venv's ipykernel as kernel "python3" (ipykernel ships that spec into
# .venv/share/jupyter; argv "python" resolves to the venv python). Register it if another spec shadows it.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m jupyter kernelspec list --json \
	  | $(PY) -c 'import json,os,sys; d=json.load(sys.stdin)["kernelspecs"].get("python3",{}).get("resource_dir",""); sys.exit(0 if os.path.realpath(d).startswith(os.path.realpath(sys.prefix)) else 1)' \
	  || $(PY) -m ipykernel install --sys-prefix --name python3
	touch $@

## flite: make sure the Debian packages are installed: flite (corpus synthesis, t2p phones), wordnet-base
## (WordNet's example sentences, the text of the natural corpus), festival and festvox-kdlpc16k (chapter 13's new voice)
flite:
	@if command -v flite >/dev/null 2>&1 && [ -f /usr/share/wordnet/data.noun ] && command -v text2wave >/dev/null 2>&1 \
	  && [ -d /usr/share/festival/voices/english/ked_diphone ]; then exit 0; fi; \
	pkgs="flite wordnet-base festival festvox-kdlpc16k"; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$pkgs; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo DEBIAN_FRONTEND=noninteractive apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $$pkgs; \
	else \
	  echo "flite, wordnet-base and festival's ked voice are required: sudo apt-get install $$pkgs (Debian/Ubuntu)" >&2; \
	  exit 1; \
	fi

setup: venv flite

corpus: setup
	$(PY) -m csm_lib.data --hours 1

## corpus-bench: rebuilds the 1 h corpus from scratch and writes its build speed to results/corpus_build.json
corpus-bench: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.data --hours 1 --force --report results/corpus_build.json

## judges-baseline: writes results/judges_baseline.json
judges-baseline: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.metrics baseline

## codec: retrain the reference codec -> checkpoints/codec_reference.{safetensors,json}
## (about an hour on 2 CPU cores; builds a separate 2 h training corpus and its phone alignments first)
codec: setup
	$(PY) -m csm_lib.train_codec train --preset=reference --hours=2 --batch=8 --steps=6000 \
	  --out=checkpoints/codec_reference

## codec-eval: judge the reference codec on the test split -> results/codec.json
codec-eval: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.train_codec eval --checkpoint=checkpoints/codec_reference

## model: train the reference CSM on the CPU -> checkpoints/csm_reference.{safetensors,json}, in two stages.
## Stage 1 (runs/reference): the wordnet corpus (real sentences, 20 h, seed 3; 4% of conversations use words training
## never sees), phones as the text input (chapter 07b compares bpe, chars, phones), MODEL_STEPS steps of 8 windows of
## 512 positions (~160 min). Its validation loss stopped falling from step ~4,750 while the training loss went on
## down: it had begun to learn its 12,917 training sentences by heart.
## Stage 2 (runs/reference40): the same recipe on twice the speech (40 h, the same seed: the same sentences are held
## out, training reads 2x as many distinct sentences), from stage 1's model to MODEL_MORE_STEPS on one cosine schedule
## (AdamW restarts, the learning rate warms up again over 200 steps; ~65 min).
## Resumable over several sittings: each `make model` trains up to MODEL_MINUTES more per stage (default 60) and copies
## the model to checkpoints/; run it again to go on, from runs/, or from the committed checkpoint when runs/ is gone
## (train.resolve_start; stage 2 starts from a finished stage 1, --after). The first sitting of a stage also builds
## its corpus (~10 min per 20 h) and codec tokens (~6 min per 20 h).
## Stage 3 (runs/reference3 -> checkpoints/csm_stage3, not shipped until `make model-ship`): from stage 2's model, to
## MODEL_FINAL_STEPS on the 40 h corpus with a fresh warm-up and cosine decay (lr 5e-4, the alignment study's) and a
## quarter of the windows regrouped so a speaker may talk twice in a row (the corpus's turns always alternate, and the
## voice followed turn order: chapter 07b section 5). No alignment loss: none moved held-out WER in the study.
## Each sitting commits its model to checkpoints/csm_stage3 so the next one continues from it.
## Run nothing else meanwhile: two torch threads on two shared cores slow to a crawl when anything else runs.
## fp32, not bf16: whether bf16 autocast is faster depends on the CPU (results/training_knobs.json); fp32 reproduces on any.
## audio_dropout=0.5: on the template corpus, without it the model memorised its training turns
## (results/reference_attempt1_probe.json).
MODEL_STEPS ?= 6000
MODEL_MORE_HOURS ?= 40
MODEL_MORE_STEPS ?= 7800
MODEL_MINUTES ?= 60
MODEL_FINAL_STEPS ?= 10800
MODEL_STAGE3 = --hours=$(MODEL_MORE_HOURS) --steps=$(MODEL_FINAL_STEPS) --schedule_start=$(MODEL_MORE_STEPS) \
  --lr=5e-4 --warmup=100 --regroup=0.25
MODEL_STAGE4_STEPS ?= 13800
MODEL_STAGE4 = --hours=$(MODEL_MORE_HOURS) --steps=$(MODEL_STAGE4_STEPS) --schedule_start=$(MODEL_FINAL_STEPS) \
  --lr=5e-4 --warmup=100 --regroup=0.5
MODEL_RECIPE = --preset=reference --text=wordnet --hours=20 --corpus_seed=3 --unseen_share=0.04 \
  --batch=8 --max_len=512 --steps=$(MODEL_STEPS) --lr=1.5e-3 --warmup=200 --amp=fp32 --decoder_fraction=0.25 \
  --audio_dropout=0.5 --eval_every=250 --judge_turns=0 --threads=2
MODEL_MORE = --hours=$(MODEL_MORE_HOURS) --steps=$(MODEL_MORE_STEPS)
MODEL_SHIPPED = $(PY) -c "import json; print('yes' if json.load(open('checkpoints/csm_reference.json'))['steps'] > \
  $(MODEL_MORE_STEPS) else 'no')"
MODEL_STAGE = $(PY) -c "import json; t = json.load(open('checkpoints/csm_reference.json'))['train']; \
  print(2 if t['hours'] == $(MODEL_MORE_HOURS) else 1)"
model: setup
	@if [ "$$($(MODEL_SHIPPED) 2>/dev/null)" = yes ]; then \
	  echo "checkpoints/csm_reference is the shipped stage 4: make model has nothing to do. To retrain from scratch," \
	    "delete checkpoints/csm_reference.* checkpoints/csm_stage3.* checkpoints/csm_stage4.*, then" \
	    "run make model until stage 3 has finished, make model-stage4 until stage 4 has, and make model-ship"; else $(MAKE) model-stages-1-3; fi

## model-stages-1-3: what `make model` runs until stage 4 ships (one sitting of stage 1 or 2, then stage 3's).
model-stages-1-3: setup
	if [ "$$($(MODEL_STAGE) 2>/dev/null)" != 2 ]; then \
	  OMP_NUM_THREADS=2 $(PY) -m csm_lib.train $(MODEL_RECIPE) --text_input=phones --minutes=$(MODEL_MINUTES) \
	    --out=runs/reference --continue_from=checkpoints/csm_reference.safetensors && \
	  for f in model.safetensors model.json model.tokenizer.json; do \
	    cp runs/reference/$$f checkpoints/csm_reference.$${f#model.}; done; fi
	OMP_NUM_THREADS=2 $(PY) -m csm_lib.train $(MODEL_RECIPE) $(MODEL_MORE) --text_input=phones \
	  --minutes=$(MODEL_MINUTES) --out=runs/reference40 --continue_from=checkpoints/csm_reference.safetensors \
	  --after=checkpoints/csm_reference.safetensors
	for f in model.safetensors model.json model.tokenizer.json; do \
	  cp runs/reference40/$$f checkpoints/csm_reference.$${f#model.}; done
	$(MAKE) model-stage3

## model-stage3: stage 3 alone (stage 2 must have finished: checkpoints/csm_reference at MODEL_MORE_STEPS).
model-stage3: setup
	OMP_NUM_THREADS=2 $(PY) -m csm_lib.train $(MODEL_RECIPE) $(MODEL_STAGE3) --text_input=phones \
	  --minutes=$(MODEL_MINUTES) --out=runs/reference3 --continue_from=checkpoints/csm_stage3.safetensors \
	  --after=checkpoints/csm_reference.safetensors
	for f in model.safetensors model.json model.tokenizer.json; do \
	  cp runs/reference3/$$f checkpoints/csm_stage3.$${f#model.}; done

## model-stage4: stage 3 continued with half its windows regrouped (a speaker talks twice or more in a row, or alone),
## a candidate for the voice in every turn order (stage 3 must have finished: checkpoints/csm_stage3 at MODEL_FINAL_STEPS).
model-stage4: setup
	OMP_NUM_THREADS=2 $(PY) -m csm_lib.train $(MODEL_RECIPE) $(MODEL_STAGE4) --text_input=phones \
	  --minutes=$(MODEL_MINUTES) --out=runs/reference4 --continue_from=checkpoints/csm_stage4.safetensors \
	  --after=checkpoints/csm_stage3.safetensors
	for f in model.safetensors model.json model.tokenizer.json; do \
	  cp runs/reference4/$$f checkpoints/csm_stage4.$${f#model.}; done

## model-ship: make stage 4 the shipped reference once it has finished its steps (checkpoints/csm_stage4 ->
## checkpoints/csm_reference; against stage 3, results/stage4_vs_stage3.json: lower validation loss and WER, no
## paired interval worse). Every result measured with the old reference is then stale: `make results` re-measures them.
model-ship: setup
	$(PY) -c "import json, sys; m = json.load(open('checkpoints/csm_stage4.json')); \
	  sys.exit(0 if m['steps'] >= m['train']['steps'] else f\"stage 4 is at step {m['steps']} of {m['train']['steps']}\")"
	for f in safetensors json tokenizer.json; do cp checkpoints/csm_stage4.$$f checkpoints/csm_reference.$$f; done

## seed-variants: the seed's dual memory bank and cross-modal attention trained inside CSM (csm_lib/seed_model.py), and
## the plain CSM beside them at equal compute: each starts from checkpoints/csm_reference and trains VARIANT_STEPS more
## steps of the reference recipe (same windows, same schedule; warm-up 50) -> checkpoints/csm_{plain,memory,cross_modal}
## (bf16 copies). One variant at a time (~10 min each); a finished one is skipped: delete its checkpoint to rebuild it.
VARIANT_STEPS ?= 300
seed-variants: setup
	ref=$$($(PY) -c "import json; print(json.load(open('checkpoints/csm_reference.json'))['steps'])"); \
	for v in plain memory cross_modal; do \
	  if [ -e checkpoints/csm_$$v.json ]; then echo "checkpoints/csm_$$v exists"; continue; fi; \
	  rm -rf runs/variant_$$v; \
	  OMP_NUM_THREADS=2 $(PY) -m csm_lib.train $(MODEL_RECIPE) $(MODEL_MORE) --text_input=phones --warmup=50 \
	    --eval_every=100 --variant=$$([ $$v = plain ] || echo $$v) --init=checkpoints/csm_reference.safetensors \
	    --steps=$$((ref + $(VARIANT_STEPS))) --out=runs/variant_$$v; \
	  $(PY) -m csm_lib.checkpoint runs/variant_$$v/model.safetensors checkpoints/csm_$$v.safetensors bf16; \
	done

## model-eval: choose the sampling temperature on 30 validation turns (results/temperature_sweep.json), then judge
## the reference CSM at it on held-out sentences (test split: 40 turns) and on the unseen-word split (30 turns),
## with and without context, and the test turns again with their context laid out four ways (as in the corpus, the
## speaker's own turn first, last, alone: evaluate.LAYOUTS) -> results/reference_model.json;
## reference_model_probe.json (about 40 min).
## The test turns are those of stage 1's corpus (20 h, --hours), the turns every earlier reference was judged on;
## stage 2's larger corpus holds out the same sentences, and the result counts its overlap against that corpus.
model-eval: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.judges.evaluate sweep checkpoints/csm_reference.safetensors results/temperature_sweep.json
	t=$$($(PY) -c "import json; print(json.load(open('results/temperature_sweep.json'))['chosen'])"); \
	CSM_PROGRESS=0 $(PY) -m csm_lib.judges.evaluate checkpoints/csm_reference.safetensors --turns=40 --unseen_turns=30 \
	  --temperature=$$t --hours=20 --layouts=all
	CSM_PROGRESS=0 $(PY) -m csm_lib.judges.evaluate probe checkpoints/csm_reference.safetensors results/reference_model_probe.json

## text-inputs: what should the backbone read? The model recipe with bpe, chars and phones, COMPARE_MINUTES of
## training each (same steps schedule, same wall time), judged with context on the same 16 held-out and 16
## unseen-word turns -> results/text_input.json (chapter 07b). About 3 x COMPARE_MINUTES + 20 min.
COMPARE_MINUTES ?= 12
COMPARE_TURNS ?= 16
text-inputs: setup
	for t in bpe chars phones; do \
	  OMP_NUM_THREADS=2 $(PY) -m csm_lib.train $(MODEL_RECIPE) --text_input=$$t --minutes=$(COMPARE_MINUTES) \
	    --out=runs/text-$$t; \
	done
	CSM_PROGRESS=0 $(PY) -m csm_lib.judges.evaluate compare results/text_input.json \
	  runs/text-bpe/model.safetensors runs/text-chars/model.safetensors runs/text-phones/model.safetensors \
	  --turns=$(COMPARE_TURNS)

## alignment-study: which training-only alignment remedy makes the reference read better, at equal compute
## (csm_lib/judges/alignment_study.py) -> results/alignment_study.json: from the shipped reference, STUDY_STEPS more steps of
## its recipe on the 20 h corpus for each arm (base; phone, ctc, guided; the best two together; regrouped turn order),
## each judged on the same 40 held-out test turns with context. Resumable (runs/alignment_study/); about 8 x 15 min.
STUDY_STEPS ?= 300
STUDY_THREADS ?= 2
alignment-study: setup
	OMP_NUM_THREADS=2 $(PY) -m csm_lib.judges.alignment_study --steps=$(STUDY_STEPS) --threads=$(STUDY_THREADS)

## budget-gpu: paper_422m's peak GPU memory and speed, beside the estimate -> results/paper_422m_gpu.json
## (needs a CUDA GPU; about 2 min on an H200. The layout step reads the 1 h corpus and may run elsewhere:
## copy runs/gpu/layout.json to the GPU machine and run the second line there)
budget-gpu: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.budget layout --hours=1 --out=runs/gpu/layout.json
	CSM_PROGRESS=0 $(PY) -m csm_lib.budget measure --layout=runs/gpu/layout.json --device=cuda \
	  --out=results/paper_422m_gpu.json

## model-422m: (needs a CUDA GPU; not run here) the seed's 422M model (model.PRESETS["paper_422m"], with our codec's
## 8 codebooks) on the reference's 40 h corpus, in the configuration chapter 07a's budget chose for an 8 GB card:
## bf16 autocast without its weight cache, fused AdamW, gradient checkpointing, micro-batch 2 x 16 accumulated,
## the allocator capped at 7.5 GB (an out-of-memory error past it, as on the card). Resumable: run it again to go on
## (--minutes bounds a sitting). Measured at 6.1 s/step on an H200 under the cap (results/paper_422m_gpu.json):
## 3,000 steps ~5 h there; a consumer card is slower by its bf16 throughput (an estimate, chapter 07a).
## MODEL_422M_ARGS adds or overrides options (the last one given wins), e.g. MODEL_422M_ARGS=--minutes=60.
MODEL_422M_RECIPE = --preset=paper_422m --text=wordnet --hours=40 --corpus_seed=3 --unseen_share=0.04 \
  --text_input=phones --batch=32 --accum=16 --max_len=512 --steps=3000 --lr=3e-4 --warmup=200 --amp=bf16 \
  --autocast_cache=false --checkpointing=true --fused_adam=true --memory_cap_gb=7.5 --decoder_fraction=0.0625 \
  --audio_dropout=0.5 --eval_every=250 --ckpt_every=100 --device=cuda --out=runs/paper_422m \
  --continue_from=runs/paper_422m/model.safetensors
MODEL_422M_ARGS ?=
model-422m: setup
	$(PY) -m csm_lib.train $(MODEL_422M_RECIPE) $(MODEL_422M_ARGS)

## bench-…: the timing benchmarks of chapters 04-07a (csm_lib/bench/) -> results/*.json. Run nothing else meanwhile:
## they time a CPU shared by two cores. The notebooks read these files; `make test` never rewrites them.
bench-kv-cache: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench kv-cache

bench-amortization: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench amortization

bench-context-cost: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench context-cost

bench-training-knobs: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench training-knobs

## bench-inference: chapter 08 (csm_lib/bench/inference.py, streaming.py) -> results/inference.json: the fast path against the
## plain path and transformers' generate, context length, attention backends, time to first audio, INT8 (with the
## WER of 20 held-out turns: needs the reference corpus of `make model`), speculative decoding, torch.compile
## (about 15 min on 2 cores; needs flite)
bench-inference: setup flite
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench inference

## baselines: the latency table's other systems, trained on the reference CSM's corpus, codec and phones
## (csm_lib/baselines/train.py): VALL-E-style and AudioLM-style at the CSM's parameter count, BASELINE_MINUTES
## each, and the full-turn column's character LM, TEXTLM_MINUTES. A sitting resumes runs/<system> when it exists.
BASELINE_MINUTES ?= 15
TEXTLM_MINUTES ?= 4
baselines: setup
	for s in valle audiolm; do \
	  OMP_NUM_THREADS=2 CSM_PROGRESS=0 $(PY) -m csm_lib.baselines.train --system=$$s --minutes=$(BASELINE_MINUTES); \
	  cp runs/$$s/model.safetensors checkpoints/$${s}_reference.safetensors; \
	  cp runs/$$s/model.json checkpoints/$${s}_reference.json; \
	done
	OMP_NUM_THREADS=2 CSM_PROGRESS=0 $(PY) -m csm_lib.baselines.train --system=textlm --minutes=$(TEXTLM_MINUTES)
	cp runs/textlm/model.safetensors checkpoints/textlm_reference.safetensors
	cp runs/textlm/model.json checkpoints/textlm_reference.json
	cp runs/textlm/model.tokenizer.json checkpoints/textlm_reference.tokenizer.json

## bench-latency: chapter 09's table (csm_lib/bench/latency.py) -> results/latency_table.json: pipeline, AudioLM-style,
## VALL-E-style and CSM on 24 held-out replies (speech out and full turn), latency vs reply length, the cost model,
## and each system's WER (needs the checkpoints of `make baselines` and the reference corpus of `make model`)
bench-latency: setup flite
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench latency

## bench-loop: chapter 09's voice loop (csm_lib/voice_loop.py, csm_lib/bench/loop.py) -> results/voice_loop.json: the
## four systems under one streaming loop (user audio at real speed in 80 ms chunks, silero-vad's end-of-turn rule,
## pocketsphinx fed chunk by chunk, the text LM's first phrase) timed from the end of the user's speech on 24
## held-out turns; the end-of-turn trade-off on paused turns; streamed vs whole-utterance WER (needs the checkpoints
## of `make baselines`; about 20 min, run nothing else meanwhile)
bench-loop: setup flite
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench loop

## finetune: fine-tune the shipped reference on a folder of your recordings (LJSpeech layout: metadata.csv of id|text,
## wavs/<id>.wav; csm_lib/voice_folder.py) -> runs/finetune/model.safetensors, which load_generator loads (speaker 2).
## MODE=decoder (the default) trains the audio decoder and the new speaker's embedding; full: every weight; lora: rank-8
## adapters. Resumable: run it again to go on (FINETUNE_MINUTES per sitting, 0 = to the end). `$(PY) -m csm_lib.finetune
## --help` lists every option. About 2 min (decoder) to 3 min (full) for 200 steps on 2 cores.
DATA ?=
MODE ?= decoder
FINETUNE_MINUTES ?= 0
finetune: setup
	@if [ -z "$(DATA)" ]; then echo "usage: make finetune DATA=folder [MODE=decoder|full|lora]" >&2; exit 2; fi
	OMP_NUM_THREADS=2 $(PY) -m csm_lib.finetune --data=$(DATA) --mode=$(MODE) --minutes=$(FINETUNE_MINUTES) \
	  --out=runs/finetune

## bench-finetune: chapter 13's table (csm_lib/bench/finetune.py) -> results/finetune.json and results/finetune_samples/:
## festival's ked voice (10 min of held-out WordNet sentences, data/voices/ked) cloned by context vs fine-tuned (decoder,
## full, LoRA, full with replay; 1, 3, 10 min of data), the modes chosen between on the folder's held-out clips and
## judged on 30 held-out sentences; the old voices before and after (about 40 min on 2 cores; resumable: fine-tunes
## in runs/finetune_bench/, judged turns cached there)
bench-finetune: setup
	CSM_PROGRESS=0 OMP_NUM_THREADS=2 $(PY) -m csm_lib.bench.finetune

## serve: the reference model over HTTP on 127.0.0.1:8000 (csm_lib/serve/; `$(PY) -m csm_lib.serve --help` for
## --model, --codec, --port and every limit). No key is needed on loopback; any other --host needs CSM_API_KEY
## (README, "Serving"). Ctrl-C stops it.
serve: setup
	$(PY) -m csm_lib.serve $(SERVE_ARGS)

## bench-serve: chapter 11 (csm_lib/bench/serve.py) -> results/serving.json: 1, 4 and 8 concurrent streaming clients
## (TTFB, RTF, throughput), server memory over 500 requests, codec chunk cost, 1 worker x 2 threads (about 5 min)
bench-serve: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench serve

## quality-judges: chapter 10's judges validated (csm_lib/judges/quality.py) -> results/quality_validation.json: thresholds
## fitted on 80 valid-split turns, then ground truth, codec resynthesis and six broken controls scored on 100 held-out
## test turns of the reference corpus (needs the corpus of `make model`; about 25 min)
quality-judges: setup flite
	CSM_PROGRESS=0 OMP_NUM_THREADS=2 $(PY) -m csm_lib.judges.quality validate --turns=100 --calibration_turns=80

## bench-quality: chapter 10's table (csm_lib/bench/quality.py) -> results/quality_table.json and results/quality_samples/:
## ground truth, CSM with and without context, the seed variants (`make seed-variants`) and chapter 09's baselines
## (`make baselines`) on 100 held-out test turns x 2 sampling seeds. Long (about 1.5 h on 2 cores); resumable: each
## system's judged turns are cached in data/quality_cache/ (delete it to start afresh)
bench-quality: setup flite
	CSM_PROGRESS=0 OMP_NUM_THREADS=2 $(PY) -m csm_lib.bench.quality

## bench-pronunciation: chapter 10's homograph and pronunciation-continuation checks (csm_lib/judges/pronunciation.py) ->
## results/pronunciation.json: the forced-choice judge validated on flite, then flite and the reference CSM (2 seeds);
## about 2 min on 2 cores
bench-pronunciation: setup flite
	CSM_PROGRESS=0 OMP_NUM_THREADS=2 $(PY) -m csm_lib.judges.pronunciation

## screenshot: the browser test (JupyterLab + chromium) writing figures/12_playground.png (needs chromium)
screenshot: setup
	CSM_OUTPUT_DIR= CSM_PROGRESS=0 $(PY) -m pytest -q -p no:cacheprovider tests/test_browser.py

## bench: every timing benchmark (about 3 min on 2 cores, and bench-inference's 15)
bench: bench-kv-cache bench-amortization bench-context-cost bench-training-knobs bench-inference

## parity: csm_lib vs transformers' CsmForConditionalGeneration on small random models -> results/parity.json
## (float32 max |Δ logits| and greedy codes, about 10 s on one core; the README quotes it rounded up)
parity: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.convert parity --out=results/parity.json

## results: every result that depends on the shipped reference, re-measured in order (csm_lib/bench/results.py:
## model-eval, bench-inference, bench-latency, bench-loop, seed-variants, bench-quality, bench-pronunciation,
## bench-serve, bench-finetune). A step whose files record the shipped checkpoint's fingerprint is skipped, so an
## interrupted run resumes; about 4.3 h on 2 cores when everything is stale. `make results-list`: only what is stale.
results: setup flite
	$(PY) -m csm_lib.bench.results

results-list: setup
	$(PY) -m csm_lib.bench.results --list

## results-other: the results that depend on no trained CSM (corpus, judges, codec, timings of random models, parity)
results-other: corpus-bench judges-baseline codec-eval bench parity

## workbook: execute every notebook in order, headless, in place (cwd = notebooks/).
## CSM_PROGRESS=0 so the saved outputs carry no progress bars, matching what `make test` (nbval) produces.
workbook: setup
	@shopt -s nullglob; nbs=(notebooks/[0-9][0-9]*_*.ipynb); \
	if [ $${#nbs[@]} -eq 0 ]; then echo "no notebooks/[0-9][0-9]*_*.ipynb found" >&2; exit 1; fi; \
	for nb in $$(printf '%s\n' "$${nbs[@]}" | LC_ALL=C sort); do \
	  echo "== executing $$nb"; \
	  CSM_PROGRESS=0 $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=python3 "$$nb"; \
	done

test: setup
	$(PY) -m ruff check .
	CSM_PROGRESS=0 $(PY) -m pytest -q $(NBVAL_FLAGS) --durations=10 notebooks tests

## test-portable: `make test` as on another CPU. PyTorch, oneDNN and MKL are held to their plain (SSE) kernels,
## so floats come out different in the last bits, as they do on a reader's machine; every compared output must
## still match and every assert hold. Slower than `make test`.
test-portable: setup
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	  CSM_PROGRESS=0 $(PY) -m pytest -q $(NBVAL_FLAGS) --durations=10 notebooks tests

lab: setup
	$(PY) -m jupyter lab notebooks/

lint: venv
	$(PY) -m ruff check

clean-data:
	rm -rf data/
