#!/usr/bin/env bash
# Runs every pipeline step by hand (no Snakemake) for the given datasets and prints each step's
# wall time. Usage: benchmarks/run_steps.sh OUT_ROOT CONFIG [CONFIG ...] -- DATASET [DATASET ...]
# Example: benchmarks/run_steps.sh /tmp/bench config/config.yaml config/gpu.yaml -- synthetic-mri
set -euo pipefail
root=$1; shift
configs=(); while [ "$1" != "--" ]; do configs+=("$1"); shift; done; shift
medxgan=${MEDXGAN:-medxgan}

setting() {  # setting DATASET SECTION KEY: the merged configs' value (a list space-separated)
    python -c 'import sys; from medxgan.config import dataset_settings, load_config
value = dataset_settings(load_config(*sys.argv[4:]), sys.argv[1])[sys.argv[2]][sys.argv[3]]
print(" ".join(value) if isinstance(value, list) else value)' "$1" "$2" "$3" "${configs[@]}"
}

timed() {  # timed NAME COMMAND...: run, print "NAME seconds"
    local name=$1; shift
    local start=$EPOCHREALTIME
    "$@"
    awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-28s %8.1f s\n", n, b - a }'
}

for ds in "$@"; do
    data=$root/data/$ds; out=$root/results/$ds; mkdir -p "$out/logs"
    common=(--config "${configs[@]}" --dataset "$ds")
    m=(--manifest "$data/manifest.csv")
    c=(--classifier "$out/classifier/model.safetensors")
    g=(--generator "$out/gan/generator.safetensors")
    i=(--inversion "$out/inversion/latents.safetensors")
    timed "$ds prepare" $medxgan prepare "${common[@]}" --out-dir "$data" 2>"$out/logs/prepare.log"
    timed "$ds train-classifier" $medxgan train-classifier "${common[@]}" "${m[@]}" --out-dir "$out/classifier" 2>"$out/logs/train_classifier.log"
    timed "$ds train-oracle" $medxgan train-oracle "${common[@]}" "${m[@]}" --out-dir "$out/oracle" 2>"$out/logs/train_oracle.log"
    timed "$ds train-gan" $medxgan train-gan "${common[@]}" "${m[@]}" "${c[@]}" --out-dir "$out/gan" 2>"$out/logs/train_gan.log"
    e=()  # the encoder, trained and passed exactly when the config's inversion starts from it
    init=$(setting "$ds" inversion init)
    if [ "$init" = encoder ]; then
        timed "$ds train-encoder" $medxgan train-encoder "${common[@]}" "${m[@]}" "${g[@]}" --out-dir "$out/encoder" 2>"$out/logs/train_encoder.log"
        e=(--encoder "$out/encoder/model.safetensors")
    fi
    timed "$ds invert" $medxgan invert "${common[@]}" "${m[@]}" "${c[@]}" "${g[@]}" "${e[@]}" --out-dir "$out/inversion" 2>"$out/logs/invert.log"
    heatmaps=$out/explanations/heatmaps.safetensors  # every method of explain.methods, in one job
    timed "$ds explain" $medxgan explain "${common[@]}" "${m[@]}" "${c[@]}" "${g[@]}" "${i[@]}" \
        --out "$heatmaps" 2>"$out/logs/explain.log"
    timed "$ds evaluate" $medxgan evaluate "${common[@]}" "${m[@]}" "${c[@]}" "${i[@]}" --explanations "$heatmaps" \
        --oracle "$out/oracle/model.safetensors" --out-dir "$out" 2>"$out/logs/evaluate.log"
    timed "$ds figures" $medxgan figures "${common[@]}" "${m[@]}" "${c[@]}" "${g[@]}" "${i[@]}" --explanations "$heatmaps" \
        --metrics "$out/metrics.csv" --curves "$out/metrics_curves.csv" --oracle "$out/oracle/model.safetensors" \
        --out-dir "$out/figures" 2>"$out/logs/figures.log"
done
$medxgan summarize --results "$root/results" --datasets "$@" --out "$root/results/summary.md"
