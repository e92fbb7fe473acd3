#!/usr/bin/env bash
# Nightly cron entry point. Example crontab line (02:30 every night, logs kept per day):
#   30 2 * * * /srv/adfactory/jobs/nightly.sh >> /var/log/adfactory/$(date +\%F).log 2>&1
# Environment: DATE (default: today), ADFACTORY_CONFIG (default: factory.toml), RAY_ADDRESS (join a cluster;
# unset = start a local one). Extra arguments go to `adfactory run`. Exit codes: see docs/operations.md "Exit codes".
set -euo pipefail
cd "$(dirname "$0")/.."
date_arg="${DATE:-$(date +%F)}"
config_arg=()
if [[ -n "${ADFACTORY_CONFIG:-}" ]]; then config_arg=(--config "$ADFACTORY_CONFIG"); fi
echo "$(date -Is) adfactory nightly run for ${date_arg} starting on $(hostname)"
exec .venv/bin/adfactory run --date "$date_arg" "${config_arg[@]}" "$@"
