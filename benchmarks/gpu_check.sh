#!/usr/bin/env bash
# The CUDA paths on one GPU, in one go (run on a GPU machine from the repo root; wheels in .whl when offline):
# bf16 autocast through `accelerate launch` (1 process), QLoRA, and the throughput benchmark against a plain
# transformers.Trainer + PEFT baseline, on a randomly initialised Qwen2 with the real 0.5B shape.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; rm -rf /tmp/runs
STEPS=${STEPS:-40}; BATCH=${BATCH:-16}
python3 -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
python3 -m lorakit.cli doctor 2>&1 | tail -25
python3 benchmarks/shape_model.py 0.5b /tmp/m05 >/dev/null
common="--model /tmp/m05 --data src/lorakit/demo/train.jsonl --max-steps $STEPS --batch-size $BATCH --runs-dir /tmp/runs --save-steps 1000"
echo "== LoRA bf16, accelerate launch (1 process)"
accelerate launch --num_processes 1 --mixed_precision no -m lorakit.cli train $common --name lora 2>&1 | tail -3
cp /tmp/runs/lora/summary.json "$OUT/lora_summary.json"
echo "== QLoRA (4-bit NF4)"
python3 -m lorakit.cli train $common --method qlora --name qlora 2>&1 | tail -3
cp /tmp/runs/qlora/summary.json "$OUT/qlora_summary.json" 2>/dev/null
echo "== throughput: transformers.Trainer + PEFT (bf16, pad to longest) vs lorakit"
python3 benchmarks/train_throughput.py --model /tmp/m05 --steps "$STEPS" --batch "$BATCH" --records 172 2>&1 | tail -12 | tee "$OUT/throughput.txt"
echo "== lorakit with padding-free batches forced on (SDPA, dense block mask)"
python3 benchmarks/train_throughput.py --model /tmp/m05 --steps "$STEPS" --batch "$BATCH" --records 172 --only lorakit --lorakit --padding-free true 2>&1 | tail -1
echo "== summaries"
python3 - <<'PY'
import json
for n in ("lora", "qlora"):
    try:
        s = json.load(open(f"/tmp/runs/{n}/summary.json"))
        print(n, {k: s[k] for k in ("status", "global_step", "tokens_per_second", "peak_memory_mb", "train_loss", "precision", "world_size")})
    except OSError as e:
        print(n, "missing", e)
PY
