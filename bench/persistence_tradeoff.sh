#!/usr/bin/env bash
# Writer batch size / flush interval trade-off (issue 5): for every pair of
# BATCH_ROWS in {100, 500, 1000, 5000} and FLUSH_INTERVAL_MS in {100, 500,
# 1000}, drains a backlog of N envelopes (default 100,000) through the
# consumer into PostgreSQL and records msgs/s, batch sizes and COPY latency.
# Writes a Markdown table to results/persistence-tradeoff.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
cargo build --release -q -p chatflow-consumer --example drain
scripts/ensure-services.sh redis rabbitmq postgres
DB_USER=postgres DB_NAME="${DB_NAME:-chatflow}" database/setup_database.sh >/dev/null
out=results/persistence-tradeoff.md
mkdir -p results
{
  echo "# Writer batch size × flush interval"
  echo
  echo "Drain of $N backlogged envelopes (100 quorum queues, prefetch 100, 4 writers) into PostgreSQL on a 2-core box; \`bench/persistence_tradeoff.sh\`, $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  echo "| BATCH_ROWS | FLUSH_INTERVAL_MS | drain msgs/s | batches | rows per batch p50 / max | COPY+commit p50 / p95 / p99 (ms) |"
  echo "|---|---|---|---|---|---|"
} > "$out"
for rows in 100 500 1000 5000; do
  for ms in 100 500 1000; do
    line=$(target/release/examples/drain --messages "$N" --batch-rows "$rows" --flush-interval-ms "$ms" 2>&1)
    rate=$(echo "$line" | sed -n 's/.*from start (\([0-9]*\) msg\/s.*/\1/p')
    stats=$(echo "$line" | grep '^stored')
    batches=$(echo "$stats" | sed -n 's/.* in \([0-9]*\) batches.*/\1/p')
    p50=$(echo "$stats" | sed -n 's/.*rows p50 \([0-9]*\), max \([0-9]*\).*/\1 \/ \2/p')
    copy=$(echo "$stats" | sed -n 's/.*COPY p50 \([0-9]*\) us p95 \([0-9]*\) us p99 \([0-9]*\) us.*/\1 \2 \3/p' \
      | awk '{printf "%.1f / %.1f / %.1f", $1/1000, $2/1000, $3/1000}')
    echo "| $rows | $ms | $rate | $batches | $p50 | $copy |" | tee -a "$out"
  done
done
echo "table: $out"
