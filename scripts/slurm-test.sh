#!/usr/bin/env bash
# `cleanse protocol slurm` against a real Slurm: installs Debian's slurm-wlm and munge, starts a
# single-node cluster on 127.0.0.1 (slurmctld + slurmd), submits a tiny protocol (synthetic data,
# width 4, two attacks x two models x two defenses) as a 4-task job array with the table as an
# afterok job, kills one task mid-run, re-submits it, and checks that the merged table equals a
# single-process run of the same spec. Needs root (it installs packages and starts daemons).
#   bash scripts/slurm-test.sh [path to the cleanse binary]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/cleanse}")
[[ -x $BIN ]] || { echo "slurm-test: no cleanse binary at $BIN (cargo build --release)" >&2; exit 1; }
fail() { echo "slurm-test: FAILED: $*" >&2; exit 1; }
if [[ $(id -u) != 0 ]]; then
  # Packages, /etc/slurm and the daemons need root: run the whole test under sudo.
  command -v sudo >/dev/null || fail "needs root or sudo (installs slurm-wlm and starts its daemons)"
  exec sudo -E bash "$0" "$BIN"
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "== installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

echo "== starting munge and a single-node Slurm on 127.0.0.1"
host=$(hostname -s)
mkdir -p /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge 2>/dev/null || true
[[ -s /etc/munge/munge.key ]] || fail "/etc/munge/munge.key missing (the munge package makes it)"
pgrep -x munged >/dev/null || runuser -u munge -- munged || munged --force
node=$(slurmd -C | head -n1 | sed "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=cleanse-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
$node State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c
slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 1
done
sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)' || { cat /var/log/slurm/*.log >&2; fail "the node never came up"; }
sinfo

work=$(mktemp -d)
trap 'scancel -u root 2>/dev/null || true; rm -rf "$work"' EXIT
# The tiny protocol with longer defenses, so that a task can be stopped in the middle of one.
sed -e 's/flags = { epochs = 1, batch-size = 8 }/flags = { epochs = 40, batch-size = 8 }/' \
  protocols/tiny.toml > "$work/tiny.toml"
grep -q 'epochs = 40' "$work/tiny.toml" || fail "could not lengthen the defenses of protocols/tiny.toml"

echo "== the same protocol in one process"
"$BIN" protocol run "$work/tiny.toml" --out "$work/single" 2>"$work/single.log" \
  || { cat "$work/single.log" >&2; fail "the single-process run"; }
"$BIN" protocol table "$work/single" >/dev/null

echo "== as a Slurm job array (4 tasks) with the table as an afterok job"
"$BIN" protocol slurm "$work/tiny.toml" --out "$work/slurm" --tasks 4 --cpus-per-task 1 --submit \
  | tee "$work/submit.out"
array=$(sed -n 's/^array job \([0-9]*\), table job \([0-9]*\)$/\1/p' "$work/submit.out")
table=$(sed -n 's/^array job \([0-9]*\), table job \([0-9]*\)$/\2/p' "$work/submit.out")
[[ -n $array && -n $table ]] || fail "no job ids from submit.sh"
log1="$work/slurm/slurm/logs/${array}_1.out"
# Stop task 1 in the middle of one of its defenses (after a checkpoint).
for _ in $(seq 600); do
  if compgen -G "$work/slurm/*/*/*/checkpoint/state.json" >/dev/null \
    && [[ -f $log1 ]] && grep -q "cleanse defend" "$log1"; then
    break
  fi
  sleep 0.5
done
grep -q "cleanse defend" "$log1" 2>/dev/null || fail "task 1 never reached a defense"
sleep 2
scancel "${array}_1"
echo "slurm-test: cancelled task ${array}_1 during: $(grep 'cleanse ' "$log1" | tail -n1 | cut -c1-100)"
for _ in $(seq 600); do
  squeue -h -j "$array" 2>/dev/null | grep -q . || break
  sleep 1
done
squeue -h -j "$array" 2>/dev/null | grep -q . && fail "the array did not end"
# The table job waits on a task that did not end well: it never starts.
sleep 2
if squeue -h -j "$table" -o %r 2>/dev/null | grep -q .; then
  echo "slurm-test: the table job waits: $(squeue -h -j "$table" -o %r)"
  scancel "$table"
elif [[ -f $work/slurm/tables/tiny.md ]]; then
  fail "the table job ran although a task was cancelled"
fi
[[ -f $work/slurm/tables/tiny.md ]] && fail "a table was written before every task had ended well"

echo "== re-submitting task 1, then the table"
again=$(sbatch --parsable --array=1 "$work/slurm/slurm/protocol.sbatch")
again=${again%%;*}
table=$(sbatch --parsable --dependency=afterok:"$again" "$work/slurm/slurm/table.sbatch")
table=${table%%;*}
for _ in $(seq 600); do
  squeue -h -j "$again,$table" 2>/dev/null | grep -q . || break
  sleep 1
done
relog="$work/slurm/slurm/logs/${again}_1.out"
cat "$relog"
grep -q -- "--resume" "$relog" || fail "the re-submitted task resumed nothing (was the kill mid-run?)"
[[ -f $work/slurm/tables/tiny.md ]] || { cat "$work/slurm/slurm/logs/"*.out >&2; fail "no table from the table job"; }
if ! diff "$work/single/tables/tiny.md" "$work/slurm/tables/tiny.md"; then
  fail "the Slurm table differs from the single-process table"
fi
cat "$work/slurm/tables/tiny.md"
echo "slurm-test: passed (the merged Slurm table equals the single-process table)"
