#!/usr/bin/env bash
# One SenseFlow distillation on several nodes (Slurm). Submit from the repository root:
#   sbatch --nodes=2 experiments/launch/slurm_distill.sh flux_dev senseflow
# Every node runs one torchrun with 8 processes; torchrun's c10d rendezvous on the first node
# joins them. The stage command is the one dvc.yaml runs, so its outputs land where
# `dvc commit distill-<method>` expects them; a killed job resumes when resubmitted.
#SBATCH --job-name=senseflow-distill
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
set -euo pipefail
profile="${1:?profile (sdxl, sd35_large, sd35_medium, flux_dev)}"
method="${2:-senseflow}"
head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
export HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 SENSEFLOW_WEIGHTS="${SENSEFLOW_WEIGHTS:-/data/weights}"
srun torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node=8 \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:29500" \
    -m senseflow.cli pipeline distill "$method" --quiet --profile "$profile" --ablations false
