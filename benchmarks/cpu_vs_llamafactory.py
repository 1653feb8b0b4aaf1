"""CPU training speed, side by side: LLaMA-Factory's own trainer versus `lorakit train`, on the same records.

Opt-in: LLaMA-Factory lives in its own virtual environment, never in lorakit's. Create it once with

    python3 -m venv /work/lf-venv
    /work/lf-venv/bin/pip install torch==2.13.0 llamafactory==0.9.5

then `/work/lf-venv/bin/pip uninstall -y torchvision torchaudio` (PyPI's builds of both are for another torch and
break transformers' imports; text training needs neither)
(pin torch in the same command, or pip pulls a multi-GB CUDA torch; let pip pick the transformers/peft that
llamafactory wants inside that venv). Another location: --lf-venv DIR or LORAKIT_LF_VENV=DIR.

Then, from lorakit's own venv (the lorakit code under this checkout's src/ is the one measured):

    python benchmarks/cpu_vs_llamafactory.py [--rounds 2] [--steps 12] [--records 64] [--no-fp32]

Both sides get the first --records records of src/lorakit/demo/train.jsonl, the default preset's local weights,
the Qwen chat template, cutoff 512, loss on the assistant turns only, LoRA r=8 alpha=16 dropout 0 on all linear
layers, batch 4, lr 2e-4 cosine with 5 % warm-up, seed 42. LLaMA-Factory runs in its best CPU setting (bf16,
use_cpu, gradient checkpointing off, which it otherwise turns on) and in fp32; lorakit runs its defaults.
Runs alternate (LF bf16, lorakit, [LF fp32 in the first round], LF bf16, lorakit, ...) so machine noise hits
both, each in its own process. s/step is steady state: (time at the last step - time at step 2) / (steps - 2),
read from each trainer's own step ends (a TrainerCallback passed to LLaMA-Factory's run_exp; lorakit's
metrics.jsonl). The ratio is lorakit's mean s/step over the best LLaMA-Factory variant's mean s/step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
DEMO = SRC / "lorakit" / "demo"
CUTOFF = 512

LF_DRIVER = r'''
import json, sys, time, types
try:  # pip pairs llamafactory's torchaudio>=2.4 with a build for another torch; text training never uses it,
    import torchaudio  # noqa: F401  but llamafactory imports it at the top: a stand-in when it does not load
except Exception:
    import importlib.machinery as _m; sys.modules["torchaudio"] = types.ModuleType("torchaudio"); sys.modules["torchaudio"].__spec__ = _m.ModuleSpec("torchaudio", None)
    STANDIN = True
else:
    STANDIN = False
import yaml
from transformers import Trainer, TrainerCallback

cfg_path, out_path = sys.argv[1], sys.argv[2]
args = yaml.safe_load(open(cfg_path))
marks, tokens, losses = [], [], []
_step = Trainer.training_step

def training_step(self, model, inputs, *a, **kw):  # count the real (unpadded) tokens of each micro-batch
    mask = inputs.get("attention_mask")
    tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
    return _step(self, model, inputs, *a, **kw)

Trainer.training_step = training_step

class Timing(TrainerCallback):
    def on_train_begin(self, a, state, control, **kw):
        marks.append((0, time.perf_counter()))
    def on_step_end(self, a, state, control, **kw):
        marks.append((state.global_step, time.perf_counter()))
    def on_log(self, a, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            losses.append((state.global_step, logs["loss"]))

from llamafactory.train.tuner import run_exp
run_exp(args, callbacks=[Timing()])
json.dump({"marks": marks, "tokens": tokens, "losses": losses, "torchaudio_standin": STANDIN}, open(out_path, "w"))
'''


def lscpu() -> dict:
    info = {"model_name": platform.processor() or "?", "cpus": os.cpu_count()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["model_name"] = line.split(":", 1)[1].strip()
            if line.startswith("Vendor ID:"):
                info["vendor"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info["flags"] = {f: f in flags for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")}
    try:
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    return info


def check_lf(venv: Path) -> dict:
    py = venv / "bin" / "python"
    how = (f"create it with:\n    python3 -m venv {venv}\n"
           f"    {venv}/bin/pip install torch==2.13.0 llamafactory==0.9.5\n"
           "(or point --lf-venv / LORAKIT_LF_VENV at an existing one)")
    if not py.exists():
        sys.exit(f"LLaMA-Factory's virtual environment {venv} is missing; {how}")
    code = LF_DRIVER.split("import yaml")[0] + (
        "import json, importlib.metadata as m, llamafactory.train.tuner\n"
        "print(json.dumps({k: m.version(k) for k in ('llamafactory', 'torch', 'transformers', 'peft', "
        "'accelerate', 'datasets')}))\n")
    probe = subprocess.run([str(py), "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": "", "DISABLE_VERSION_CHECK": "1"})
    if probe.returncode:
        sys.exit(f"llamafactory does not import in {venv}:\n{probe.stderr[-2000:]}\n{how}")
    return json.loads(probe.stdout.strip().splitlines()[-1])


def lorakit_versions() -> dict:
    import importlib.metadata as m
    return {k: m.version(k) for k in ("torch", "transformers", "peft", "trl", "accelerate")}


def prepare(tmp: Path, n: int) -> Path:
    """The same records for both: lorakit's messages file and LLaMA-Factory's sharegpt file + dataset_info."""
    sys.path.insert(0, str(SRC))
    from lorakit.data.formats import read_records, write_records
    recs = read_records(DEMO / "train.jsonl")[:n]
    subset = tmp / "train_subset.jsonl"
    write_records(subset, recs)
    rows = [{"messages": r.messages()} for r in recs]
    (tmp / "lf_data").mkdir()
    (tmp / "lf_data" / "demo.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {"demo": {"file_name": "demo.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                              "assistant_tag": "assistant", "system_tag": "system"}}}
    (tmp / "lf_data" / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return subset


def steady(marks: list, steps: int) -> float:
    t = dict(marks)
    if 2 not in t or steps not in t:
        raise ValueError(f"step times missing: {sorted(t)}")
    return (t[steps] - t[2]) / (steps - 2)


def run_lf(args, tmp: Path, model_path: Path, variant: str, i: int) -> dict:
    out = tmp / f"lf_{variant}_{i}"
    cfg = {"model_name_or_path": str(model_path), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target": "all",
           "dataset": "demo", "dataset_dir": str(tmp / "lf_data"), "template": "qwen", "cutoff_len": CUTOFF,
           "overwrite_cache": True, "preprocessing_num_workers": 1, "output_dir": str(out),
           "overwrite_output_dir": True, "logging_steps": 1, "save_strategy": "no", "plot_loss": False,
           "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
           "learning_rate": 2e-4, "max_steps": args.steps, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
           "bf16": variant == "bf16", "use_cpu": True, "disable_gradient_checkpointing": True,
           "report_to": "none", "seed": 42, "dataloader_num_workers": 0, "disable_tqdm": True}
    import yaml
    cfg_file = tmp / f"lf_{variant}_{i}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (tmp / "lf_driver.py").write_text(LF_DRIVER, encoding="utf-8")
    res_file = tmp / f"lf_{variant}_{i}.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DISABLE_VERSION_CHECK": "1", "PYTHONPATH": "",
           "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    proc = subprocess.run([str(args.lf_venv / "bin" / "python"), str(tmp / "lf_driver.py"), str(cfg_file),
                           str(res_file)], capture_output=True, text=True, env=env, cwd=tmp)
    wall = time.perf_counter() - t0
    if proc.returncode or not res_file.exists():
        sys.exit(f"LLaMA-Factory ({variant}) failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    r = json.loads(res_file.read_text())
    marks = r["marks"]
    tok = r["tokens"]
    return {"side": "llamafactory", "variant": variant, "s_per_step": steady(marks, args.steps),
            "tokens_steady": sum(tok[2:args.steps]), "tokens": sum(tok), "first_loss": r["losses"][0][1],
            "last_loss": r["losses"][-1][1], "losses": [x[1] for x in r["losses"]], "wall_s": wall,
            "torchaudio_standin": r.get("torchaudio_standin")}


def run_lorakit(args, tmp: Path, subset: Path, i: int) -> dict:
    import yaml
    name = f"lorakit_{i}"
    cfg = {"model": args.model, "data": str(subset), "runs_dir": str(tmp), "name": name, "max_steps": args.steps,
           "batch_size": args.batch, "save_steps": 10_000, "learning_rate": 2e-4, "max_length": CUTOFF}
    if args.lorakit_fast:
        cfg["fast"] = json.loads(args.lorakit_fast)
    cfg_file = tmp / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(SRC), "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lorakit.cli", "train", str(cfg_file)], capture_output=True,
                          text=True, env=env, cwd=tmp)
    wall = time.perf_counter() - t0
    run_dir = tmp / name
    if proc.returncode or not (run_dir / "metrics.jsonl").exists():
        sys.exit(f"lorakit failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "loss" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    marks = [(r["step"], r["elapsed_s"]) for r in rows]
    variant = "fast " + args.lorakit_fast if args.lorakit_fast else "defaults"
    return {"side": "lorakit", "variant": variant, "s_per_step": steady(marks, args.steps),
            "tokens": summary.get("tokens_seen"), "tokens_per_second_steady": summary.get("tokens_per_second_steady"),
            "precision": summary.get("precision"), "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
            "losses": [r["loss"] for r in rows], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (LF bf16, lorakit) per round")
    ap.add_argument("--no-fp32", action="store_true", help="skip LLaMA-Factory's fp32 run (first round only)")
    ap.add_argument("--lf-venv", type=Path, default=Path(os.environ.get("LORAKIT_LF_VENV", "/work/lf-venv")))
    ap.add_argument("--lorakit-fast", default="", help='lorakit `fast:` settings as JSON, e.g. '
                    '\'{"fused_lora": true}\' (default: lorakit\'s own choice for the device)')
    ap.add_argument("--out", type=Path, default=None, help="write the raw results JSON here")
    args = ap.parse_args()
    if args.steps < 4:
        sys.exit("--steps must be at least 4 (steady state is measured from step 3)")
    lf_versions = check_lf(args.lf_venv)
    sys.path.insert(0, str(SRC))
    from lorakit.models import resolve
    model_path = resolve(args.model)
    machine = lscpu()
    tmp = Path(tempfile.mkdtemp(prefix="lorakit-vs-lf-"))
    subset = prepare(tmp, args.records)
    print(f"machine: {machine['model_name']}, {machine['cpus']} CPUs, flags {machine['flags']}", flush=True)
    runs = []
    plan = []
    for i in range(args.rounds):
        plan += [("lf", "bf16", i), ("lorakit", "", i)]
        if i == 0 and not args.no_fp32:
            plan.append(("lf", "fp32", i))
    for side, variant, i in plan:
        load = os.getloadavg()[0]
        print(f"[{time.strftime('%H:%M:%S')}] {side} {variant} round {i + 1} (load {load:.2f}) …", flush=True)
        r = run_lf(args, tmp, model_path, variant, i) if side == "lf" else run_lorakit(args, tmp, subset, i)
        r.update(round=i + 1, loadavg_before=load)
        print(f"    {r['s_per_step']:.2f} s/step steady, loss {r['first_loss']:.3f} → {r['last_loss']:.3f}, "
              f"wall {r['wall_s']:.0f} s", flush=True)
        runs.append(r)

    def mean(side, variant):
        xs = [r["s_per_step"] for r in runs if r["side"] == side and r["variant"] == variant]
        return statistics.mean(xs) if xs else None

    lf = {v: mean("llamafactory", v) for v in ("bf16", "fp32") if mean("llamafactory", v) is not None}
    best = min(lf, key=lf.get)
    lk_variant = runs[[r["side"] for r in runs].index("lorakit")]["variant"]
    lk = mean("lorakit", lk_variant)
    ratio = lk / lf[best]
    print(f"\nmachine: {machine['model_name']} ({machine['cpus']} CPUs; "
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["flags"].items()) + ")")
    print(f"{'':28}{'s/step (steady, mean)':>24}  runs")
    for v, s in lf.items():
        each = [f"{r['s_per_step']:.2f}" for r in runs if r["side"] == "llamafactory" and r["variant"] == v]
        print(f"{'LLaMA-Factory ' + v:28}{s:>24.2f}  {' / '.join(each)}")
    each = [f"{r['s_per_step']:.2f}" for r in runs if r["side"] == "lorakit"]
    print(f"{'lorakit ' + lk_variant:28}{lk:>24.2f}  {' / '.join(each)}")
    print(f"lorakit / LLaMA-Factory {best}: {ratio:.2f}× the time per step ({1 / ratio:.2f}× faster); "
          f"goal ≤ 0.50× — {'met' if ratio <= 0.5 else 'missed'}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
              "python": platform.python_version(), "llamafactory_venv": lf_versions,
              "lorakit_venv": lorakit_versions(), "model": args.model, "steps": args.steps, "batch": args.batch,
              "records": args.records, "runs": runs,
              "mean_s_per_step": {**{"llamafactory_" + k: v for k, v in lf.items()}, "lorakit": lk},
              "best_llamafactory": best, "ratio_time": ratio, "goal_met": ratio <= 0.5}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"raw results: {args.out}")
    print("RESULTS " + json.dumps({k: result[k] for k in ("mean_s_per_step", "ratio_time", "goal_met")}))


if __name__ == "__main__":
    main()
