#!/bin/sh
# Build the data and artifacts on first start, then serve. The steps are those of the Makefile's `artifacts`
# target, in its order: indexing.prepare (data), indexing.lm prepare (the default LM), indexing.build (indexes),
# training.train_sasrec, indexing.docids, training.train_diffugr (not the MovieLens-1M baselines of
# `indexing.build --dataset ml1m`: the gateway does not serve that set). Like make, a step is skipped when its output's
# meta.json is already there (indexing.prepare and indexing.build skip what exists themselves), so a restart
# after an interrupted build resumes with the missing steps (the trainers resume from their last epoch).
#
# Epochs come from the trainers' config dataclasses (the values of the published figures); SASREC_EPOCHS and
# DOCID_EPOCHS override them, as they do for make (CI: DOCID_EPOCHS=15).
set -eu

ARTIFACTS="${UNISR_ARTIFACTS_DIR:-artifacts/v1}"
DATA="${UNISR_DATA_DIR:-data}"

# step OUTPUT/meta.json COMMAND...: run COMMAND unless OUTPUT/meta.json exists
step() {
    target="$1"
    shift
    if [ -f "$target" ]; then
        echo "entrypoint: $target exists; skipping: $*" >&2
    else
        echo "entrypoint: $target missing; running: $*" >&2
        "$@"
    fi
}

python -m indexing.prepare
if [ -z "${UNISR_LM:-}" ]; then
    python -m indexing.lm prepare                      # the default path; idempotent
elif [ ! -e "$UNISR_LM" ]; then
    python -m indexing.lm prepare --dest "$UNISR_LM"  # never over an existing directory (it may be another LM)
fi
python -m indexing.build --artifacts "$ARTIFACTS" --recsys "$DATA/ml100k" --retrieval "$DATA/strategyqa-facts"
step "$ARTIFACTS/recommend/sasrec/meta.json" \
    python -m training.train_sasrec --data "$DATA/ml100k" --out "$ARTIFACTS/recommend/sasrec" \
    ${SASREC_EPOCHS:+--epochs "$SASREC_EPOCHS"}
step "$ARTIFACTS/retrieve/docids/meta.json" \
    python -m indexing.docids --artifacts "$ARTIFACTS"
step "$ARTIFACTS/retrieve/diffugr/meta.json" \
    python -m training.train_diffugr --mode diffusion --data "$DATA/strategyqa-facts" \
    --docids "$ARTIFACTS/retrieve/docids" --out "$ARTIFACTS/retrieve/diffugr" ${DOCID_EPOCHS:+--epochs "$DOCID_EPOCHS"}

export UNISR_HOST=0.0.0.0
exec python -m service
