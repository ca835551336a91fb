#!/bin/sh
# Two roles of the same image (deploy/compose.yaml runs both):
#
#   unisr-entrypoint [serve]   build what the gateway needs to open (data, the default LM, the cheap indexes:
#                              BM25, dense, popularity, co-occurrence; each step skips what exists), then serve.
#                              The gateway follows <artifacts root>/CURRENT: each version the trainer publishes is
#                              swapped in without a restart.
#   unisr-entrypoint train     the background job runner (python -m service.jobs): SASRec, DiffuGR, the agent,
#                              GEMS, one at a time, each validated and published as a new artifacts version in the
#                              shared volume; an interrupted job resumes from its last saved epoch on the next start.
#   unisr-entrypoint optimise  the self-evolving loop's optimiser (python -m training.optimiser): learns from the
#                              events in Redis (OPTIMISER_ARGS: its options), publishes validated versions
#
# Epochs come from the trainers' config dataclasses; UNISR_JOB_ARGS overrides per job, e.g.
# '{"diffugr": ["--epochs", "15"]}'.
set -eu

ARTIFACTS="${UNISR_ARTIFACTS_DIR:-artifacts/v1}"
DATA="${UNISR_DATA_DIR:-data}"

ROLE="${1:-serve}"
if [ "$ROLE" = "train" ]; then
    exec python -m service.jobs
elif [ "$ROLE" = "optimise" ]; then
    # shellcheck disable=SC2086 - OPTIMISER_ARGS holds several options
    exec python -m training.optimiser --artifacts "$ARTIFACTS" --data "$DATA/ml100k" ${OPTIMISER_ARGS:-}
elif [ "$ROLE" != "serve" ]; then
    echo "entrypoint: unknown role '$ROLE' (serve, train or optimise)" >&2
    exit 2
fi

python -m indexing.prepare
if [ -z "${UNISR_LM:-}" ]; then
    python -m indexing.lm prepare                      # the default path; idempotent
elif [ ! -e "$UNISR_LM" ]; then
    python -m indexing.lm prepare --dest "$UNISR_LM"  # never over an existing directory (it may be another LM)
fi
python -m indexing.build --artifacts "$ARTIFACTS" --recsys "$DATA/ml100k" --retrieval "$DATA/strategyqa-facts"
export UNISR_HOST=0.0.0.0
exec python -m service
