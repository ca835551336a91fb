#!/bin/sh
# Build the data and artifacts on first start (the equivalent of `make artifacts`), then serve.
# Same steps and SASRec epochs as the Makefile's `artifacts` target. Skipped when the SASRec
# checkpoint, the last artifact built, is already there.
set -eu

ARTIFACTS="${UNISR_ARTIFACTS_DIR:-artifacts/v1}"
DATA="${UNISR_DATA_DIR:-data}"

if [ ! -f "$ARTIFACTS/recommend/sasrec/meta.json" ]; then
    echo "entrypoint: $ARTIFACTS/recommend/sasrec/meta.json missing; preparing data and building artifacts" >&2
    python -m indexing.prepare
    python -m indexing.build --artifacts "$ARTIFACTS" --recsys "$DATA/ml100k" --retrieval "$DATA/strategyqa-facts"
    python -m training.train_sasrec --data "$DATA/ml100k" --out "$ARTIFACTS/recommend/sasrec" \
        --epochs "${UNISR_SASREC_EPOCHS:-80}"
fi

export UNISR_HOST=0.0.0.0
exec python -m service
