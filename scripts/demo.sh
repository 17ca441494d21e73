#!/usr/bin/env bash
# The demo: prepare Amazon Beauty (llm4sbr-beauty protocol), train SR-GNN, STAMP and GRU4Rec briefly,
# print a results table. About 10 minutes on a 2-core CPU. Data: $INTENTREC_DATA or ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
IR=.venv/bin/intentrec
DATA=${INTENTREC_DATA:-../shared/data}
OUT=${DEMO_OUT:-runs/demo}
EPOCHS=${DEMO_EPOCHS:-2}
$IR prepare generic "$DATA/amazon/beauty-2014-5core" --protocol llm4sbr-beauty --out "$OUT/beauty"
for model in srgnn stamp gru4rec; do
  $IR train "$OUT/beauty" --model "$model" --set train.epochs="$EPOCHS" --out "$OUT/$model"
done
$IR report "$OUT/srgnn" "$OUT/stamp" "$OUT/gru4rec"
