SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

.PHONY: venv flite setup corpus corpus-bench judges-baseline codec codec-eval model model-eval budget-gpu results workbook test lab lint clean-data \
	bench bench-kv-cache bench-amortization bench-context-cost bench-training-knobs test-portable parity

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

## flite: make sure the flite TTS binary (corpus synthesis) is installed
flite:
	@if command -v flite >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y flite; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo DEBIAN_FRONTEND=noninteractive apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y flite; \
	else \
	  echo "flite is required: sudo apt-get install flite (Debian/Ubuntu) or brew install flite (macOS)" >&2; exit 1; \
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

## model: train the reference CSM on the CPU -> runs/reference, copied to checkpoints/csm_reference.{safetensors,json}
## (builds a 40 h corpus of its own seed, ~15 min, and its codec tokens, ~9 min; then 80 min of training on
## 2 threads, about 4,800 of the 5,000 steps). Run nothing else meanwhile: two torch threads on two shared
## cores slow to a crawl when anything else runs (use --threads=1 then, about 1.6x slower per step).
## fp32, not bf16: whether bf16 autocast is faster depends on the CPU (results/training_knobs.json); fp32 reproduces on any.
## audio_dropout=0.5: without it the model memorises its training turns (results/reference_attempt1_probe.json);
## 40 h, not 5 h: on 5 h it still over-fitted (train/valid codebook-0 loss 1.2/2.94 after 1,653 steps).
model: setup
	OMP_NUM_THREADS=2 $(PY) -m csm_lib.train --preset=reference --hours=40 --corpus_seed=2 --batch=8 --max_len=512 \
	  --steps=5000 --minutes=80 --lr=1.5e-3 --warmup=200 --amp=fp32 --decoder_fraction=0.25 --audio_dropout=0.5 \
	  --eval_every=500 --judge_turns=0 --threads=2 --out=runs/reference
	cp runs/reference/model.safetensors checkpoints/csm_reference.safetensors
	cp runs/reference/model.json checkpoints/csm_reference.json
	cp runs/reference/model.tokenizer.json checkpoints/csm_reference.tokenizer.json

## model-eval: judge the reference CSM on held-out conversations of its corpus -> results/reference_model.json,
## reference_model_probe.json (about 10 min)
model-eval: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.evaluate checkpoints/csm_reference.safetensors --turns=40
	CSM_PROGRESS=0 $(PY) -m csm_lib.evaluate probe checkpoints/csm_reference.safetensors results/reference_model_probe.json

## budget-gpu: paper_422m's peak GPU memory and speed, beside the estimate -> results/paper_422m_gpu.json
## (needs a CUDA GPU; about 2 min on an H200. The layout step reads the 1 h corpus and may run elsewhere:
## copy runs/gpu/layout.json to the GPU machine and run the second line there)
budget-gpu: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.budget layout --hours=1 --out=runs/gpu/layout.json
	CSM_PROGRESS=0 $(PY) -m csm_lib.budget measure --layout=runs/gpu/layout.json --device=cuda \
	  --out=results/paper_422m_gpu.json

## bench-…: the timing benchmarks of chapters 04-07 (csm_lib/bench.py) -> results/*.json. Run nothing else meanwhile:
## they time a CPU shared by two cores. The notebooks read these files; `make test` never rewrites them.
bench-kv-cache: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench kv-cache

bench-amortization: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench amortization

bench-context-cost: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench context-cost

bench-training-knobs: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.bench training-knobs

## bench: every timing benchmark (about 3 min on 2 cores)
bench: bench-kv-cache bench-amortization bench-context-cost bench-training-knobs

## parity: csm_lib vs transformers' CsmForConditionalGeneration on small random models -> results/parity.json
## (float32 max |Δ logits| and greedy codes, about 10 s on one core; the README quotes it rounded up)
parity: setup
	CSM_PROGRESS=0 $(PY) -m csm_lib.convert parity --out=results/parity.json

## results: every results/*.json this repository reports
results: corpus-bench judges-baseline codec-eval model-eval bench parity

## workbook: execute every notebook in order, headless, in place (cwd = notebooks/).
## CSM_PROGRESS=0 so the saved outputs carry no progress bars, matching what `make test` (nbval) produces.
workbook: setup
	@shopt -s nullglob; nbs=(notebooks/[0-9][0-9]_*.ipynb); \
	if [ $${#nbs[@]} -eq 0 ]; then echo "no notebooks/[0-9][0-9]_*.ipynb found" >&2; exit 1; fi; \
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
