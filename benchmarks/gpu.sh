#!/usr/bin/env bash
# The speed figures on one GPU, in one short run (about 7 minutes on an H200), most important first:
#   1. bare loop vs difftrain-train vs diffusers' bare loop (unet_base, batch 256, bf16), with profiles;
#   2. host-device syncs per step of the difftrain-train path (set_sync_debug_mode);
#   3. the main job's wall time (trainer=gpu);
#   4. bare vs difftrain-train on MNIST (digits' 1617 images end an epoch every 7 steps);
#   5. what each option buys: foreach instead of fused Adam, TF32 in fp32, compile=true.
# Each step has its own time limit, so a slow one cannot starve the rest. Usage:
#   bash benchmarks/gpu.sh [OUT_DIR]        (on the GPU machine: source .gpu/setup.sh first)
#   NET=unet_tiny BATCH=8 STEPS=3 TRAINER=cpu MAIN=trainer.max_steps=20 DATA_ROOT=../shared/data \
#     PYTHON=.venv/bin/python bash benchmarks/gpu.sh    (a dry run on a CPU)
set -u
out=${1:-/tmp/difftrain-gpu}
mkdir -p "$out"
net=${NET:-unet_base} batch=${BATCH:-256} steps=${STEPS:-60}
shape=(--net "$net" --batch-size "$batch" --channels 3 --warmup 10)
py=${PYTHON:-python3}

step() {  # step SECONDS TITLE COMMAND...: run with a limit, say how long it took
  local limit=$1 title=$2 start=$SECONDS
  shift 2
  echo "== $title"
  timeout "$limit" "$@"
  echo "-- rc $? in $((SECONDS - start)) s"
}

step 150 "overhead: bare vs difftrain-train vs diffusers (bf16)" \
  "$py" benchmarks/train_overhead.py "${shape[@]}" --steps "$steps" --diffusers --profile "$out"
step 90 "host-device syncs of the difftrain-train path" \
  "$py" benchmarks/cuda_syncs.py "${shape[@]}" --steps 30
main_log="$out/main_job.log"
step 180 "main job: difftrain-train trainer=gpu" \
  bash -c "'$py' -m difftrain.cli.train trainer=${TRAINER:-gpu} paths.output_dir=/tmp/difftrain-main ${MAIN:-} \
           >'$main_log' 2>&1; \
           rc=\$?; grep -E 'trained [0-9]+ steps|FID|fid|Error|Traceback' '$main_log' | tail -8; exit \$rc"
step 90 "MNIST (60k images, 1 channel): bare vs difftrain-train, few epoch ends (bf16)" \
  "$py" benchmarks/train_overhead.py --net "$net" --batch-size "$batch" --channels 1 --warmup 10 \
  --steps "$steps" --overrides data=mnist "data.dataset.root=${DATA_ROOT:-/tmp/data}"
step 60 "foreach Adam instead of fused (bf16)" \
  "$py" benchmarks/train_overhead.py "${shape[@]}" --steps "$steps" --paths difftrain \
  --overrides optimizer.fused=false
step 60 "fp32, matmul highest" \
  "$py" benchmarks/train_overhead.py "${shape[@]}" --steps 20 --precision 32-true --matmul highest
step 60 "fp32, matmul high (TF32)" \
  "$py" benchmarks/train_overhead.py "${shape[@]}" --steps 20 --precision 32-true --matmul high
step 150 "compile=true (bf16)" \
  "$py" benchmarks/train_overhead.py "${shape[@]}" --steps "$steps" --paths difftrain \
  --overrides compile=true
