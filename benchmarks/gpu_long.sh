set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
python3 benchmarks/shape_model.py 0.5b /tmp/m05 >/dev/null 2>&1
echo "== long sequences (4 demo records joined), batch 8, 30 steps"
python3 benchmarks/train_throughput.py --model /tmp/m05 --steps 30 --batch 8 --records 172 --long 4 2>&1 | tail -9
echo "== short demo records, batch 32, 30 steps"
python3 benchmarks/train_throughput.py --model /tmp/m05 --steps 30 --batch 32 --records 172 2>&1 | tail -9
