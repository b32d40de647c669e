#!/usr/bin/env bash
# Recipe-size pretraining of both encoders in one call to a lent GPU machine (README "Results",
# round 2). It rebuilds the SYNTHETIC pretraining store with the Makefile's command for
# stores/syn400 (so no store has to travel), times a short run of each model, fixes the step
# budget from that, then trains ECG and PPG side by side on the one GPU and copies the results
# to $OUT. Needs: python3 with torch + pandas + scipy + h5py (the GPU image has them), the
# neurokit2 and pywavelets wheels in .whl/, and the NSTDB noise file under .devcarry/cache/.
#
#   BUDGET_S=560 OUT=/tmp/out bash scripts/gpu_pretrain.sh
set -euo pipefail
START=$(date +%s)
BUDGET_S=${BUDGET_S:-560}   # seconds from START until both runs must have finished
STORE=${STORE:-stores/syn400} RUNS=${RUNS:-runs} PARTICIPANTS=${PARTICIPANTS:-400} BATCH=${BATCH:-256} TIMING_STEPS=${TIMING_STEPS:-60}  # smaller: a CPU dry run
OUT=${OUT:?set OUT to a folder for the results}
export PYTHONUNBUFFERED=1 PULSEFM_CACHE=$PWD/.devcarry/cache
log() { echo "[$(($(date +%s) - START)) s] $*"; }

if ! python3 -c "import neurokit2" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

log "prepare (seed 0, $PARTICIPANTS participants)"
python3 -m pulsefm.cli prepare --synthetic "$PARTICIPANTS" --seed 0 --recordings-per-participant 3 --noise-bank nstdb \
    --out "$STORE" --workers "$(nproc)" 2>&1 | tail -n 3
python3 scripts/store_digest.py "$STORE" | tee "$OUT/store-digest.txt"

# a short timed run of each, side by side as the real runs will be
train() {  # modality preset augment steps out [extra --set ...]
    local mod=$1 preset=$2 aug=$3 steps=$4 out=$5
    shift 5
    OMP_NUM_THREADS=$(($(nproc) / 2)) python3 -m pulsefm.cli train --preset "$preset" --modality "$mod" \
        --store "$STORE" --out "$out" --steps "$steps" --batch-size "$BATCH" --set augment="$aug" "$@"
}
log "timing $TIMING_STEPS steps of each"
rm -rf /tmp/t-ecg /tmp/t-ppg
pids=()
for m in ecg ppg; do
    aug=$([ $m = ppg ] && echo ppg-no-noise || echo ecg)
    train $m $m "$aug" "$TIMING_STEPS" /tmp/t-$m --set log_every=5 --set val_every=100000 >/tmp/t-$m.log 2>&1 &
    pids+=($!)
done
wait "${pids[0]}" || { tail -n 20 /tmp/t-ecg.log; exit 1; }
wait "${pids[1]}" || { tail -n 20 /tmp/t-ppg.log; exit 1; }
steps_for() {  # run folder -> steps that fit in what is left of the budget
    python3 - "$1" "$((START + BUDGET_S - $(date +%s)))" "$BATCH" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
rates = sorted(r["segments_per_s"] for r in rows if "segments_per_s" in r and r["step"] > 5)
steps_per_s = rates[len(rates) // 2] / (2 * int(sys.argv[3]))  # two views per pair
left = int(sys.argv[2]) - 45  # start-up, the last validation and saving
print(max(20, int(steps_per_s * left * 0.9) // 20 * 20))
EOF
}
ECG_STEPS=$(steps_for /tmp/t-ecg)
PPG_STEPS=$(steps_for /tmp/t-ppg)
log "steps: ecg $ECG_STEPS, ppg $PPG_STEPS"

# learning rate halved every quarter of the run, 20 validations / checkpoints
ECG_RUN=$RUNS/full-ecg-$ECG_STEPS
PPG_RUN=$RUNS/full-ppg-no-noise-$PPG_STEPS
train ecg ecg ecg "$ECG_STEPS" "$ECG_RUN" --set val_every=$((ECG_STEPS / 20)) --set lr_step_intervals=5 \
    >"$OUT/ecg.log" 2>&1 &
ecg_pid=$!
train ppg ppg ppg-no-noise "$PPG_STEPS" "$PPG_RUN" --set val_every=$((PPG_STEPS / 20)) \
    --set lr_step_intervals=5 >"$OUT/ppg.log" 2>&1 &
ppg_pid=$!
wait $ecg_pid || { tail -n 20 "$OUT/ecg.log"; exit 1; }
wait $ppg_pid || { tail -n 20 "$OUT/ppg.log"; exit 1; }
log "trained"
tail -n 2 "$OUT/ecg.log" "$OUT/ppg.log"
cp "$ECG_RUN/encoder.pt" "$OUT/ecg-encoder.pt"
cp "$PPG_RUN/encoder.pt" "$OUT/ppg-encoder.pt"
tar czf "$OUT/runs.tgz" --exclude='*.pt' "$ECG_RUN" "$PPG_RUN"
log "done"
