#!/usr/bin/env bash
# Times one job of a finished run under two installs of the package, alternating A, B, A, B, ...,
# both built-in datasets side by side (one core each), as `snakemake --cores 2` runs them. On a
# machine whose speed drifts (a shared VM), back-to-back pairs compare code; two whole runs hours
# apart compare the machine too.
#   benchmarks/rerun_jobs.sh RUN_DIR JOB ROUNDS VENV_A VENV_B
#   benchmarks/rerun_jobs.sh /tmp/run check 2 /tmp/old/.venv .venv    # prints one line per job run
# RUN_DIR is a finished `snakemake --cores 2` run (its .snakemake/log holds each job's command);
# outputs go to a temporary folder, never over the run's own.
set -euo pipefail
run=$(realpath "$1"); job=$2; rounds=$3; venvs=("$(realpath "$4")" "$(realpath "$5")")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
command_of() {  # the job's shell command for a dataset, its outputs sent to $scratch
    grep -h "Shell command: medxgan $job " "$run"/.snakemake/log/*.log | grep -- "$1" | head -1 |
        sed "s/^Shell command: //; s/ 2> .*//; s#--out-dir [^ ]*#--out-dir $scratch/$1#; s#--out [^ ]*#--out $scratch/$1.safetensors#"
}
labels=(A B)
failed=0
for round in $(seq "$rounds"); do
    for side in 0 1; do
        venv=${venvs[side]}; label=${labels[side]}; pids=()
        for dataset in synthetic-cxr synthetic-mri; do
            cmd=$(command_of "$dataset" || true)
            [ -n "$cmd" ] || { echo "no '$job' command for $dataset in $run/.snakemake/log" >&2; exit 2; }
            (cd "$run" && start=$EPOCHREALTIME &&
                if PATH="$venv/bin:$PATH" eval "$cmd" 2>"$scratch/$dataset.log"; then
                    awk -v r="$round" -v l="$label" -v d="$dataset" -v a="$start" -v b="$EPOCHREALTIME" \
                        'BEGIN { printf "round %s  %s  %-14s %7.1f s\n", r, l, d, b - a }'
                else
                    echo "round $round  $label  $dataset failed:" >&2; tail -5 "$scratch/$dataset.log" >&2; exit 1
                fi) &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    done
done
exit "$failed"
