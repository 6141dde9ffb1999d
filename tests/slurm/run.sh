#!/usr/bin/env bash
# The workflow on a real one-node SLURM cluster, through snakemake-executor-plugin-slurm.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing (as root),
# writes /etc/slurm/slurm.conf for this machine from `slurmd -C`, starts munged, slurmctld and
# slurmd with their own key, socket, state and logs in a fresh folder, runs
# tests/slurm_workflow.py against them, and on any exit (a failure or a time-out included) stops
# the daemons by their PIDs and removes the configuration it wrote.
#
#   bash tests/slurm/run.sh              the test (.ci/run calls it after `make test`)
#   bash tests/slurm/run.sh COMMAND...   COMMAND instead, while the cluster runs
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
TEST_TIMEOUT=${SLURM_TEST_TIMEOUT:-960}   # seconds for the whole pytest run: above its runs' own limits (3 x 300 s), so a
                                          # run that hangs fails its test with its output
READY_TIMEOUT=60                          # seconds for slurmd to register with slurmctld
# The node has no GPU. Slurm schedules `--gpus=1` (what the plugin makes of the GPU rules' gpu=1)
# on GPUs listed in gres.conf, each with a device file: two stand-in files let the node run two
# GPU-rule jobs at a time, as its two cores allow. The jobs themselves run on the CPU.
STAND_IN_GPUS=(/dev/null /dev/zero)

PACKAGES=(slurmctld slurmd slurm-client munge)
installed=$(dpkg-query -W -f='${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -cx installed || true)
if [ "$installed" -ne "${#PACKAGES[@]}" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# Slurm's default place: jobs submitted by the plugin call srun with the SLURM_* variables
# removed, so SLURM_CONF would not reach it.
SLURM_CONF=/etc/slurm/slurm.conf
MARK="# written by medxgan's tests/slurm/run.sh"
if [ -e "$SLURM_CONF" ] && [ "$(head -n 1 "$SLURM_CONF")" != "$MARK" ]; then
  echo "slurm: $SLURM_CONF exists and was not written by this script; not touching it"
  exit 1
fi
STATE=$(mktemp -d /tmp/medxgan-slurm.XXXXXX)
PIDS=()

stop_cluster() {
  status=$?
  # Jobs first (slurmstepd ends each job's processes), then the daemons, newest first.
  scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill "${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    echo "slurm: failed; daemon logs:"
    tail -n 20 "$STATE"/*.log || true
  fi
  rm -rf "$STATE" "$SLURM_CONF" "$(dirname "$SLURM_CONF")/gres.conf"
  exit "$status"
}
trap stop_cluster EXIT

node=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=...
name=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")
mkdir -p "$STATE/ctld" "$STATE/spool"
mkdir -p "$(dirname "$SLURM_CONF")"
cat >"$SLURM_CONF" <<EOF
$MARK
ClusterName=medxgan-test
SlurmctldHost=$name(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
# No slurmdbd here, so no sacct: the plugin reads job states with squeue, which keeps a finished
# job for MinJobAge seconds; the plugin needs at least 300.
MinJobAge=300
$node NodeAddr=127.0.0.1 Gres=gpu:${#STAND_IN_GPUS[@]} State=UNKNOWN
PartitionName=cpu Nodes=$name Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$name MaxTime=INFINITE State=UP
EOF
{ echo "$MARK"; printf "NodeName=$name Name=gpu File=%s\n" "${STAND_IN_GPUS[@]}"; } >"$(dirname "$SLURM_CONF")/gres.conf"

mungekey --create --keyfile="$STATE/munge.key"
munged --foreground --force --key-file="$STATE/munge.key" --socket="$STATE/munge.socket" \
  --pid-file="$STATE/munged.pid" --seed-file="$STATE/munged.seed" --log-file="$STATE/munged.log" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$STATE/munge.socket" ] && break; sleep 0.1; done
slurmctld -D -f "$SLURM_CONF" >/dev/null 2>&1 &   # -D: in the foreground, so $! is its PID; it logs to $STATE
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >/dev/null 2>&1 &
PIDS+=($!)

start=$(date +%s)
until sinfo -h -N -o %T 2>/dev/null | grep -qx idle; do
  if (( $(date +%s) - start > READY_TIMEOUT )); then echo "slurm: node not idle after ${READY_TIMEOUT}s"; exit 1; fi
  sleep 1
done
echo "slurm: one-node cluster up in $(( $(date +%s) - start )) s: $(sinfo -h -o '%P %D %c %m %G' | tr '\n' ';')"

if [ $# -gt 0 ]; then  # another command against the running cluster, e.g. to try the profile by hand
  "$@"
else
  MEDXGAN_SLURM_CLUSTER=1 timeout "$TEST_TIMEOUT" "$PYTHON" -m pytest tests/slurm_workflow.py -q -p no:cacheprovider
fi
