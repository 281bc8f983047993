#!/usr/bin/env bash
# Runs the experiments behind RESULTS.md on the bundled data: several runs at a time, each run
# started once the runs it needs are complete, unfinished runs resumed, finished ones skipped.
#
#   bash scripts/grid.sh [GROUP...]
#
# Groups (default: all, in this order): subset cleanse ft baselines ablation init0 scale wanet ood tsne
#   gtsrb sweep faithful width seeds
#   subset    clean reference and the six attacks with --preset subset (CIFAR-10 subset)
#   cleanse   `defend kd` at the method's defaults on each subset attack
#   ft        `defend ft` (fine-tuning, the method spec's defaults) on each subset attack
#   baselines `defend fp`, `nad`, `mcr`, `anp` and `ibau` at the method spec's defaults on each
#             subset attack (into fp/, nad/, mcr/, anp/, ibau/)
#   ablation  the initialisation ablation on subset BadNets (uniform, single:1..4, none, fresh)
#   init0     each initialisation's student before distillation (`--epochs 0`), with t-SNE maps
#   scale     cleanser settings for small unlabeled sets on subset BadNets (ratios x3 and x4,
#             batch 64) and Blended (ratios x3 and x4; x4 on 250 and 500 unlabeled images)
#   wanet     subset WaNet with stronger warps (strength 1 and 2; 2 without the noise mode; 2 for
#             72 epochs)
#   ood       cleansing subset BadNets with GTSRB images as the unlabeled data
#   tsne      t-SNE figures of the BadNets teacher and its cleansed student
#   gtsrb     clean reference, BadNets and IAB on the GTSRB subset
#   sweep     BadNets all-to-one and all-to-all at 1%, 5%, 10%, 20% poison rate
#   faithful  clean reference and the six attacks with the supplement's settings
#   width     subset Blended at width 32, cleansed at the defaults and with stage 3 re-initialised
#             (20 epochs at lr 0.05, and the method's 100 at 0.01)
#   seeds     the subset clean reference and subset BadNets again at seeds 1 and 2 (the seed
#             sets the held-out split, the initialisation, the batch order and the poisoned
#             images), for the spread of clean accuracy between runs; Blended at seed 1 (its
#             own trigger pattern too) and its stage-3 cleanses
#
# Environment (defaults in brackets):
#   DEVICE [cpu]  --device of every run (cpu, wgpu, auto)
#   THREADS [1]   --threads of every run
#   SLOTS [2]     runs at a time
#   DATA [../shared/data]  folder holding cifar10-subset/ and gtsrb32-subset/
#   RUNS [runs]   output folder; run NAME goes to RUNS/NAME, its log to RUNS/logs/
#   ONLY          run only these runs (names as above, e.g. "subset/clean ablation/init-fresh")
#   BIN           the cleanse binary [target/release/cleanse, built first]
#   STOP_AFTER    seconds after which no new run starts and running ones are stopped (they
#                 resume on the next call) [none]
#   RUNNER [processes]  `batch`: write the runs, in an order that puts every run after those it
#                 needs, to RUNS/batch.txt and run them one after another in one `cleanse batch`
#                 process (on a GPU this compiles the kernels once instead of once per run;
#                 SLOTS is ignored, STOP_AFTER only stops new runs from starting)
# Summarise with: cargo run --release -- summarize runs/subset runs/cleanse ...
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-1}
SLOTS=${SLOTS:-2}
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
STOP_AFTER=${STOP_AFTER:-0}
if [[ -z ${BIN:-} ]]; then
  BIN=target/release/cleanse
  cargo build --release || exit 1
fi
CIFAR=(--dataset cifar10 --data "$DATA/cifar10-subset")
GTSRB=(--dataset gtsrb --data "$DATA/gtsrb32-subset")
DEV=(--device "$DEVICE" --threads "$THREADS")
# The clean reference of the subset preset: its training settings without an attack.
SUBSET_TRAIN=(--width 16 --epochs 24 --batch-size 32 --lr 0.05 --crop-padding 0 --no-flip --holdout 0.25)
# The faithful group: the supplement's recipe at width 16 for 30 epochs on the subset preset's
# 3,000/1,000 split (the size and length of the PyTorch reference run in issue 3).
FAITHFUL=(--width 16 --epochs 30 --holdout 0.25)
# The short distillation schedule (the cosine schedule and temperature ramp in 20 epochs at lr
# 0.05) that kept most accuracy with stage 3 re-initialised (RESULTS.md).
S3E20=(--epochs 20 --lr 0.05)
mkdir -p "$RUNS/logs"

names=()
declare -A deps cmd done_file out_of
# job NAME "DEPS" ARGS...: run `cleanse ARGS... --out RUNS/NAME` once every run in DEPS is done.
job() {
  local name=$1 d=$2
  shift 2
  [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || return 0
  names+=("$name")
  deps[$name]=$d
  cmd[$name]=$(printf '%q ' "$@")
  out_of[$name]=$RUNS/$name
  done_file[$name]=$RUNS/$name/report.json
}

want() { [[ " $GROUPS_WANTED " == *" $1 "* ]]; }
GROUPS_WANTED=${*:-subset cleanse ft baselines ablation init0 scale wanet ood tsne gtsrb sweep faithful width seeds}

# Each attack's cleanse directly follows it, so a partial grid has complete before/after pairs.
for a in badnets blended clean sig lc wanet iab; do
  if want subset; then
    case $a in
      clean) job subset/clean "" train "${CIFAR[@]}" "${SUBSET_TRAIN[@]}" "${DEV[@]}" ;;
      # LC makes its PGD images on the clean reference.
      lc) job subset/lc "subset/clean" attack lc --preset subset --clean-model "$RUNS/subset/clean" \
        "${CIFAR[@]}" "${DEV[@]}" ;;
      *) job subset/$a "" attack $a --preset subset "${CIFAR[@]}" "${DEV[@]}" ;;
    esac
  fi
  if want cleanse && [[ $a != clean ]]; then
    job cleanse/$a "subset/$a" defend kd --model "$RUNS/subset/$a" "${DEV[@]}"
  fi
  if want ft && [[ $a != clean ]]; then
    job ft/$a "subset/$a" defend ft --model "$RUNS/subset/$a" "${DEV[@]}"
  fi
  if want baselines && [[ $a != clean ]]; then
    for d in fp nad mcr anp ibau; do
      job $d/$a "subset/$a" defend $d --model "$RUNS/subset/$a" "${DEV[@]}"
    done
  fi
done
if want ablation; then
  for m in fresh none uniform single:1 single:2 single:3 single:4; do
    job ablation/init-${m/:/} "subset/badnets" defend kd --model "$RUNS/subset/badnets" --init $m "${DEV[@]}"
  done
fi
if want init0; then
  # Every initialisation's student before any distillation (`--epochs 0`), and its t-SNE map:
  # the supplement's Figure 2 b, f-j, measured.
  for m in adaptive uniform single:1 single:2 single:3 single:4 none fresh; do
    job init0/${m/:/} "subset/badnets" defend kd --model "$RUNS/subset/badnets" --init $m --epochs 0 \
      "${DEV[@]}"
    name=tsne/init0-${m/:/}
    job $name "init0/${m/:/}" tsne --model "$RUNS/init0/${m/:/}" "${DEV[@]}"
    out_of[$name]=$RUNS/$name.png
    done_file[$name]=$RUNS/$name.json
  done
fi
if want scale; then
  # Changes that might make the cleanser work on 1,000 unlabeled images (subset BadNets): three
  # times the adaptive ratios; batch 64 (16 steps per epoch, near the paper's 20 on 5,000 images).
  job scale/ratios-x3 "subset/badnets" defend kd --model "$RUNS/subset/badnets" \
    --ratios 0.03,0.03,0.09,0.27,0.81,0.3 "${DEV[@]}"
  job scale/batch-64 "subset/badnets" defend kd --model "$RUNS/subset/badnets" --batch-size 64 "${DEV[@]}"
  job scale/blended-ratios-x3 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0.03,0.03,0.09,0.27,0.81,0.3 "${DEV[@]}"
  # Four times the ratios: stage 4 fully re-initialised, the rest at 4x.
  for a in badnets blended; do
    n=ratios-x4; [[ $a == badnets ]] || n=$a-ratios-x4
    job scale/$n "subset/$a" defend kd --model "$RUNS/subset/$a" --ratio-scale 4 "${DEV[@]}"
  done
  # Re-initialising stage 3 alone took BadNets to 8.6% ASR at 0.5 points below its teacher
  # (RESULTS.md); the same on Blended.
  job scale/blended-single3 "subset/blended" defend kd --model "$RUNS/subset/blended" --init single:3 \
    "${DEV[@]}"
  # Uniform initialisation removed more of BadNets' backdoor than adaptive at the same 22% total
  # (RESULTS.md); Blended with uniform at twice the total (44% of every group).
  job scale/blended-uniform-x2 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init uniform --ratio-scale 2 "${DEV[@]}"
  # Blended with stages 2 and 3 both re-initialised entirely (23.4% of the weights), nothing
  # else: single:2 and single:3 each cut BadNets' ASR most at the least accuracy (RESULTS.md); on
  # Blended, single:3 left 23%.
  job scale/blended-stages23 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,1,1,0,0 "${DEV[@]}"
  # Stem, stage 1 and stages 2-3 re-initialised entirely (24.7%), stage 4 and fc kept: every
  # student that kept the stem and stage 1 ended near 20% ASR on Blended.
  job scale/blended-stages0123 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 1,1,1,1,0,0 "${DEV[@]}"
  # A fully random student distilled from the Blended teacher: how much of the backdoor the
  # teacher's outputs on clean images pass on by themselves, with no retained weight.
  job scale/blended-fresh "subset/blended" defend kd --model "$RUNS/subset/blended" --init fresh \
    "${DEV[@]}"
  # The top of the network (stage 4 and the classifier) entirely re-initialised, stem and stages
  # 1-3 kept: the link from trigger features to the target, not the features, replaced.
  job scale/blended-top "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,0,0,1,1 "${DEV[@]}"
  # Stage 3 re-initialised (the cheapest setting in accuracy, 23% ASR) with five times the
  # learning rate: how far the retained weights move during distillation. Fine-tuning at a small
  # learning rate keeps Blended's backdoor (method spec: 96% ASR after FT); a large one moves
  # the kept weights further from the teacher's.
  job scale/blended-single3-lr005 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 --lr 0.05 "${DEV[@]}"
  # Stage 3 re-initialised, distilled at a constant temperature of 1 instead of rising to 4: the
  # student's ASR climbs back as it matches the teacher's softened outputs more closely (RESULTS.md);
  # at T = 1 the small logits (the target class's among them) weigh less.
  job scale/blended-single3-t1 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 --temperature 1,1 "${DEV[@]}"
  # Short distillation: with stage 3 re-initialised the student's ASR is lowest after about 10
  # epochs and climbs back as it matches the teacher (RESULTS.md); 10 and 20 epochs (the cosine
  # schedule and the temperature ramp compressed to them) at lr 0.01 and 0.05.
  for e in 10 20; do
    for lr in 0.01 0.05; do
      job scale/blended-single3-e$e-lr${lr#0.} "subset/blended" defend kd --model "$RUNS/subset/blended" \
        --init single:3 --epochs $e --lr $lr "${DEV[@]}"
    done
  done
  # The short stage-3 cleanse on BadNets, whose backdoor stage 3 alone removed in 100 epochs.
  job scale/single3-e20-lr05 "subset/badnets" defend kd --model "$RUNS/subset/badnets" \
    --init single:3 "${S3E20[@]}" "${DEV[@]}"
  job scale/single3-e20-lr05-mixup "subset/badnets" defend kd --model "$RUNS/subset/badnets" \
    --init single:3 "${S3E20[@]}" --mixup "${DEV[@]}"
  # Stage 3 re-initialised with --mixup for the method's 100 epochs at lr 0.01, on BadNets and
  # Blended.
  job scale/single3-mixup "subset/badnets" defend kd --model "$RUNS/subset/badnets" \
    --init single:3 --mixup "${DEV[@]}"
  job scale/blended-single3-mixup "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 --mixup "${DEV[@]}"
  # The short stage-3 cleanse on Blended with one more setting changed. The loss has no T^2
  # factor, so a higher temperature also takes smaller steps toward the teacher's function, whose
  # return brings the backdoor back (RESULTS.md): a constant 4 and a constant 8. Stages 2 and 3
  # together, and stage 3 with the classifier, re-initialised entirely. The same cleanse with
  # --seed 1 (another random stage 3 and batch order): the spread of the cleanse itself.
  job scale/blended-single3-e20-lr05-t4 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 "${S3E20[@]}" --temperature 4,4 "${DEV[@]}"
  job scale/blended-single3-e20-lr05-t8 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 "${S3E20[@]}" --temperature 8,8 "${DEV[@]}"
  job scale/blended-stages23-e20-lr05 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,1,1,0,0 "${S3E20[@]}" "${DEV[@]}"
  job scale/blended-stage3fc-e20-lr05 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,0,1,0,1 "${S3E20[@]}" "${DEV[@]}"
  job scale/blended-single3-e20-lr05-seed1 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 "${S3E20[@]}" --seed 1 "${DEV[@]}"
  # Stage 3 and the classifier re-initialised ended at 7.6% ASR but 27.5% clean accuracy in 20
  # epochs (RESULTS.md): the classifier alone; stage 3 with half the classifier; stage 3 with the
  # whole classifier for the method's 100 epochs at lr 0.01.
  job scale/blended-fc-e20-lr05 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,0,0,0,1 "${S3E20[@]}" "${DEV[@]}"
  job scale/blended-stage3fc50-e20-lr05 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,0,1,0,0.5 "${S3E20[@]}" "${DEV[@]}"
  job scale/blended-stage3fc "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,0,1,0,1 "${DEV[@]}"
  # Two levers outside the method spec on the short stage-3 cleanse: mixup of the unlabeled
  # images (teacher and student see the same mixed images; more distinct inputs from 1,000
  # images) and ten times the weight decay (to see whether weights the clean images do not use shrink); mixup
  # with stage 3 and the classifier re-initialised, which removed the backdoor at a fresh
  # student's accuracy.
  job scale/blended-single3-e20-lr05-mixup "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 "${S3E20[@]}" --mixup "${DEV[@]}"
  job scale/blended-single3-e20-lr05-mixup-seed1 "subset/blended" defend kd \
    --model "$RUNS/subset/blended" --init single:3 "${S3E20[@]}" --mixup --seed 1 "${DEV[@]}"
  job scale/blended-single3-e20-lr05-wd5e-3 "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --init single:3 "${S3E20[@]}" --weight-decay 5e-3 "${DEV[@]}"
  job scale/blended-stages23-e20-lr05-mixup "subset/blended" defend kd \
    --model "$RUNS/subset/blended" --ratios 0,0,1,1,0,0 "${S3E20[@]}" --mixup "${DEV[@]}"
  job scale/blended-stage3fc-e20-lr05-mixup "subset/blended" defend kd --model "$RUNS/subset/blended" \
    --ratios 0,0,0,1,0,1 "${S3E20[@]}" --mixup "${DEV[@]}"
  # How the size of the unlabeled set moves Blended's trade-off at 4x: 250 and 500 of the 1,000
  # held-out images (1,000 is the run above).
  for n in 250 500; do
    job scale/blended-ratios-x4-u$n "subset/blended" defend kd --model "$RUNS/subset/blended" \
      --ratio-scale 4 --unlabeled-limit $n "${DEV[@]}"
  done
fi
if want wanet; then
  # WaNet's warp at the spec's strength 0.5 moves pixels by about a quarter pixel, which 24 epochs
  # on 3,000 images do not learn (RESULTS.md); stronger warps.
  for s in 1 2; do
    job wanet/s$s "" attack wanet --preset subset --wanet-s $s "${CIFAR[@]}" "${DEV[@]}"
  done
  # s = 2 without the noise mode (random warps that keep their label), which s = 2 alone did not
  # overcome in 24 epochs (RESULTS.md).
  job wanet/s2-nonoise "" attack wanet --preset subset --wanet-s 2 --wanet-cross-ratio 0 \
    "${CIFAR[@]}" "${DEV[@]}"
  # s = 2 with three times the epochs (72; learning-rate drops at 36 and 54): whether training
  # length is what limits WaNet here.
  job wanet/s2-e72 "" attack wanet --preset subset --wanet-s 2 --epochs 72 "${CIFAR[@]}" "${DEV[@]}"
fi
if want ood; then
  job ood/badnets-gtsrb "subset/badnets" defend kd --model "$RUNS/subset/badnets" \
    --unlabeled-dataset gtsrb --unlabeled-data "$DATA/gtsrb32-subset" "${DEV[@]}"
fi
if want tsne; then
  for who in subset/badnets cleanse/badnets; do
    name=tsne/${who/\//-}
    job $name "$who" tsne --model "$RUNS/$who" "${DEV[@]}"
    out_of[$name]=$RUNS/$name.png
    done_file[$name]=$RUNS/$name.json
  done
fi
if want gtsrb; then
  job gtsrb/clean "" train "${GTSRB[@]}" "${SUBSET_TRAIN[@]}" "${DEV[@]}"
  job gtsrb/badnets "" attack badnets --preset subset "${GTSRB[@]}" "${DEV[@]}"
  # The GTSRB trigger gallery's IAB column uses this trained generator, its LC column gtsrb/clean.
  job gtsrb/iab "" attack iab --preset subset "${GTSRB[@]}" "${DEV[@]}"
fi
if want sweep; then
  # All-to-one at 10% is subset/badnets (the same command).
  for r in 0.01 0.05 0.1 0.2; do
    [[ $r == 0.1 ]] ||
      job sweep/badnets-a2o-$r "" attack badnets --preset subset --poison-rate $r "${CIFAR[@]}" "${DEV[@]}"
    job sweep/badnets-a2a-$r "" attack badnets --preset subset --poison-rate $r --all-to-all \
      "${CIFAR[@]}" "${DEV[@]}"
  done
fi
if want faithful; then
  job faithful/clean "" train "${CIFAR[@]}" "${FAITHFUL[@]}" "${DEV[@]}"
  job faithful/lc "faithful/clean" attack lc --clean-model "$RUNS/faithful/clean" \
    "${CIFAR[@]}" "${FAITHFUL[@]}" "${DEV[@]}"
  for a in iab wanet badnets blended sig; do
    job faithful/$a "" attack $a "${CIFAR[@]}" "${FAITHFUL[@]}" "${DEV[@]}"
  done
fi
if want width; then
  # Model width, the one cleanser setting the runs above do not change: subset Blended at width
  # 32 (four times the compute), cleansed at the defaults and with stage 3 re-initialised.
  job width/blended-w32 "" attack blended --preset subset --width 32 "${CIFAR[@]}" "${DEV[@]}"
  # First the short stage-3 schedule that kept most accuracy at width 16 (20 epochs, lr 0.05).
  job width/blended-w32-single3-e20-lr05 "width/blended-w32" defend kd \
    --model "$RUNS/width/blended-w32" --init single:3 "${S3E20[@]}" "${DEV[@]}"
  job width/blended-w32-single3 "width/blended-w32" defend kd --model "$RUNS/width/blended-w32" \
    --init single:3 "${DEV[@]}"
  job width/blended-w32-kd "width/blended-w32" defend kd --model "$RUNS/width/blended-w32" "${DEV[@]}"
  # A second width-32 teacher (seed 1: its own split, initialisation, poisoned images and
  # pattern) with the short stage-3 cleanse.
  job width/blended-w32-s1 "" attack blended --preset subset --width 32 --seed 1 "${CIFAR[@]}" \
    "${DEV[@]}"
  job width/blended-w32-s1-single3-e20-lr05 "width/blended-w32-s1" defend kd \
    --model "$RUNS/width/blended-w32-s1" --init single:3 "${S3E20[@]}" "${DEV[@]}"
  # A third width-32 teacher (seed 2), chosen before any of its cleanses ran.
  job width/blended-w32-s2 "" attack blended --preset subset --width 32 --seed 2 "${CIFAR[@]}" \
    "${DEV[@]}"
  job width/blended-w32-s2-single3-e20-lr05 "width/blended-w32-s2" defend kd \
    --model "$RUNS/width/blended-w32-s2" --init single:3 "${S3E20[@]}" "${DEV[@]}"
  # The short stage-3 cleanse with --mixup on the third width-32 teacher.
  job width/blended-w32-s2-single3-e20-lr05-mixup "width/blended-w32-s2" defend kd \
    --model "$RUNS/width/blended-w32-s2" --init single:3 "${S3E20[@]}" --mixup "${DEV[@]}"
fi
if want seeds; then
  for seed in 1 2; do
    job seeds/clean-s$seed "" train "${CIFAR[@]}" "${SUBSET_TRAIN[@]}" --seed $seed "${DEV[@]}"
    job seeds/badnets-s$seed "" attack badnets --preset subset --seed $seed "${CIFAR[@]}" "${DEV[@]}"
  done
  # A second Blended teacher (its own held-out split, initialisation, batch order, poisoned
  # images and trigger pattern), to check cleanser settings chosen on subset/blended's test
  # metrics on a model they were not chosen on.
  job seeds/blended-s1 "" attack blended --preset subset --seed 1 "${CIFAR[@]}" "${DEV[@]}"
  job seeds/blended-s1-single3-e20-lr05 "seeds/blended-s1" defend kd \
    --model "$RUNS/seeds/blended-s1" --init single:3 "${S3E20[@]}" "${DEV[@]}"
  job seeds/blended-s1-stage3fc-e20-lr05 "seeds/blended-s1" defend kd \
    --model "$RUNS/seeds/blended-s1" --ratios 0,0,0,1,0,1 "${S3E20[@]}" "${DEV[@]}"
  job seeds/blended-s1-single3 "seeds/blended-s1" defend kd --model "$RUNS/seeds/blended-s1" \
    --init single:3 "${DEV[@]}"
  job seeds/blended-s1-single3-e20-lr05-mixup "seeds/blended-s1" defend kd \
    --model "$RUNS/seeds/blended-s1" --init single:3 "${S3E20[@]}" --mixup "${DEV[@]}"
fi

if [[ ${RUNNER:-processes} == batch ]]; then
  : >"$RUNS/batch.txt"
  for n in "${names[@]}"; do
    echo "${cmd[$n]}--out ${out_of[$n]}" >>"$RUNS/batch.txt"
  done
  stop=()
  ((STOP_AFTER > 0)) && stop=(--stop-after "$STOP_AFTER")
  exec "$BIN" batch "$RUNS/batch.txt" "${stop[@]}"
fi

is_done() {
  local f=${done_file[$1]:-$RUNS/$1/report.json}
  [[ -f $f ]] || return 1
  [[ $f != */report.json ]] || grep -q '"status": "complete"' "$f"
}

declare -A state pid_of # state: waiting, running, done, failed
for n in "${names[@]}"; do
  if is_done "$n"; then state[$n]=done; echo "done already: $n"; else state[$n]=waiting; fi
done

stop_all() {
  # Checkpoints are written atomically after each epoch, so a stopped run loses at most the
  # epoch in progress. Processes still busy after a short grace (a GPU driver call) are killed.
  for n in "${!pid_of[@]}"; do kill -INT "${pid_of[$n]}" 2>/dev/null; done
  for _ in 1 2 3 4 5; do
    alive=0
    for n in "${!pid_of[@]}"; do kill -0 "${pid_of[$n]}" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 1
  done
  for n in "${!pid_of[@]}"; do kill -KILL "${pid_of[$n]}" 2>/dev/null; done
  echo "$(date +%T) stopped: ${!pid_of[*]} (they resume on the next call)"
  exit 2
}
trap stop_all INT TERM

start() {
  local n=$1 out=${out_of[$1]} log=$RUNS/logs/${1//\//-}.log resume=()
  [[ -f $out/checkpoint/state.json || -f $out/checkpoint/started.json ]] && resume=(--resume)
  echo "$(date +%T) start: $n"
  # exec: the job's pid is the run itself, so stopping it reaches the run.
  eval "exec \"$BIN\" ${cmd[$n]} --out \"$out\" ${resume[*]:-}" >"$log" 2>&1 &
  pid_of[$n]=$!
  state[$n]=running
}

t0=$SECONDS
status=0
while :; do
  running=0
  for n in "${!pid_of[@]}"; do
    if ! kill -0 "${pid_of[$n]}" 2>/dev/null; then
      if wait "${pid_of[$n]}"; then
        state[$n]=done; echo "$(date +%T) finished: $n"
      else
        state[$n]=failed; status=1; echo "$(date +%T) FAILED: $n (see $RUNS/logs/${n//\//-}.log)"
      fi
      unset "pid_of[$n]"
    else
      running=$((running + 1))
    fi
  done
  late=0
  ((STOP_AFTER > 0 && SECONDS - t0 >= STOP_AFTER)) && late=1
  if ((late)); then
    ((running > 0)) && stop_all
    break
  fi
  pending=0
  for n in "${names[@]}"; do
    [[ ${state[$n]} == waiting ]] || continue
    ready=1
    for d in ${deps[$n]}; do
      case ${state[$d]:-} in
        done) ;;
        failed) state[$n]=failed; echo "skipped: $n (needs $d, which failed)"; ready=0; break ;;
        "") is_done "$d" || { state[$n]=failed; echo "skipped: $n (needs $d)"; ready=0; break; } ;;
        *) ready=0 ;;
      esac
    done
    [[ ${state[$n]} == waiting ]] || continue
    pending=$((pending + 1))
    if ((ready && running < SLOTS)); then
      start "$n"
      running=$((running + 1))
    fi
  done
  ((running == 0 && pending == 0)) && break
  sleep 2
done
exit $status
