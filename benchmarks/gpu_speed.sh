#!/usr/bin/env bash
# GPU speed runs on one GPU machine (repo root; carried wheels in $WHEELS when offline). Usage:
#   benchmarks/gpu_speed.sh smoke|fixed|var|steps|big|7b|profile   (see the case below; each fits in one 10-minute call)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import inspect, torch, transformers, peft, trl, importlib.metadata as md
from torch.nn.attention.varlen import varlen_attn
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "| transformers",
      transformers.__version__, "peft", peft.__version__, "trl", trl.__version__, "liger", md.version("liger-kernel"),
      "triton", md.version("triton"), "pyarrow", md.version("pyarrow"))
print("varlen_attn", inspect.signature(varlen_attn))
PY
B="python3 benchmarks/gpu_speed.py --workdir /tmp/gs"
case "${1:-smoke}" in
  smoke)
    $B --parity --shape 0.5b --data var --batch 4 --steps 4
    $B --shape 0.5b --data fixed --batch 16 --steps 15 --json "$OUT/05b_fixed.json" \
       --variants hf,hf_liger,lorakit,lk_no_fused_loss,lk_no_kernels,lk_no_fused_lora,lk_log10 ;;
  fixed)
    $B --shape 0.5b --data fixed --batch 16 --steps 15 --json "$OUT/05b_fixed.json" \
       --variants hf,hf_liger,lorakit,lk_no_fused_loss,lk_no_kernels,lk_no_fused_lora,lk_workers2
    $B --shape 0.5b --data var --batch 16 --steps 15 --json "$OUT/05b_var.json" \
       --variants hf,lorakit,lk_padded,lk_sdpa_packed ;;
  profile)
    $B --shape 0.5b --data fixed --batch 16 --steps 8 --variants lorakit --profile ;;
  var)
    $B --shape 0.5b --data var --batch 16 --steps 15 --json "$OUT/05b_var.json" \
       --variants hf,lorakit,lk_padded,lk_sdpa_packed ;;
  steps)  # issue 10's pieces, each on its own, and the multi-step parity (one call)
    $B --parity --shape 0.5b --data var --batch 4 --steps 8 --parity-steps 8 --json "$OUT/05b_parity.json"
    $B --shape 0.5b --data fixed --batch 16 --steps 15 --json "$OUT/05b_fixed.json" \
       --variants hf,hf_liger,lorakit,lk_no_cache,lk_sync_logs,lk_liger_flce,lk_compile ;;
  big)  # 7B shape and variable-length rows with the final defaults
    $B --shape 7b --data fixed --batch 4 --steps 10 --json "$OUT/7b_fixed.json" --variants hf,hf_liger,lorakit,lk_compile
    $B --shape 0.5b --data var --batch 16 --steps 15 --json "$OUT/05b_var.json" --variants hf,lorakit,lk_padded ;;
  7b_pieces)  # where the 7B step's time goes: one piece off at a time
    $B --shape 7b --data fixed --batch 4 --steps 10 --json "$OUT/7b_pieces.json" \
       --variants hf,lorakit,lk_padded,lk_no_fused_lora,lk_liger_flce,lk_no_kernels ;;
  7b)
    $B --shape 0.5b --data fixed --batch 16 --steps 15 --json "$OUT/05b_final.json" --variants hf,hf_liger,lorakit
    $B --shape 7b --data fixed --batch 4 --steps 10 --json "$OUT/7b_fixed.json" --variants hf,hf_liger,lorakit ;;
esac
