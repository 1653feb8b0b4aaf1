"""Benchmark: `lorakit data check` on 100,000 synthetic records, near-duplicate search included.

Prints records per second and peak memory (goal: under 60 s and under 2 GB on 2 cores). Not a timed test.

    python benchmarks/data_check_bench.py [--records 100000] [--model HF_FOLDER] [--cutoff 1024] [--keep FILE]

The records are made up here from phrase banks written for this benchmark (Chinese and English, single and
multi-turn, some with a system prompt), with 3% exact and 5% near duplicates and a sprinkling of PII, so every
check has work to do. `--model` adds the token-length checks under that model's chat template.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ZH_SUBJECTS = ["机动车驾驶人", "行人", "骑电动自行车的人", "新手司机", "货车司机", "校车驾驶人", "乘客", "出租车司机",
               "摩托车驾驶人", "车主", "学车的学员", "外地车辆"]
ZH_SITUATIONS = ["在路口遇到黄灯", "夜间在没有路灯的道路上行驶", "在高速公路上车辆出现故障", "下雨天路面湿滑",
                 "准备掉头", "经过学校门口", "在隧道里", "遇到前方交通事故", "驾驶证快到期", "车辆年检逾期",
                 "在小区里倒车", "临时停车接人", "遇到救护车鸣笛", "在山区弯道上会车", "开车时接到电话"]
ZH_ACTIONS = ["应当减速慢行并注意观察", "应当开启危险报警闪光灯", "要在车后方设置警告标志", "不能占用应急车道",
              "应当让行人先通过", "要及时到车管所办理相关手续", "应当保持安全车距", "不得超车", "要系好安全带",
              "应当按照指示标志通行", "需要先拍照固定证据", "应当靠右停车", "要使用近光灯", "不能随意变道",
              "应当主动避让", "最好联系保险公司", "可以通过手机应用在线处理"]
ZH_REASONS = ["这样可以减少事故发生的可能", "否则可能会被罚款并记分", "这是为了保护自己和他人的安全",
              "不然出了事故要承担主要责任", "相关部门会定期检查", "很多事故都是因为疏忽造成的", "这也是文明出行的要求"]
EN_SUBJECTS = ["a driver", "a cyclist", "a learner driver", "a lorry driver", "a pedestrian", "a taxi driver",
               "a motorcyclist", "a passenger", "a new car owner"]
EN_SITUATIONS = ["approaches a yellow light", "drives at night without street lights", "breaks down on the motorway",
                 "drives in heavy rain", "wants to make a U-turn", "passes a school", "drives through a tunnel",
                 "sees an accident ahead", "has an expiring licence", "misses the annual inspection",
                 "hears an ambulance siren", "receives a phone call while driving"]
EN_ACTIONS = ["should slow down and look carefully", "should switch on the hazard lights",
              "must place a warning triangle behind the car", "must not use the emergency lane",
              "should let pedestrians cross first", "should renew it at the vehicle office", "must keep a safe distance",
              "must not overtake", "should pull over to the right", "must use dipped headlights",
              "should call the insurer", "can report it online"]
EN_REASONS = ["because it lowers the risk of a crash", "or face a fine and penalty points",
              "to keep everyone on the road safe", "since most crashes come from a moment of inattention"]


def zh_record(rng: random.Random) -> dict:
    s, sit = rng.choice(ZH_SUBJECTS), rng.choice(ZH_SITUATIONS)
    q = f"{s}{sit}的时候，{rng.choice(['应该怎么做', '需要注意什么', '有什么规定', '怎么处理比较好'])}？"
    a = "".join(f"{rng.choice(ZH_ACTIONS)}，{rng.choice(ZH_REASONS)}。" for _ in range(rng.randint(2, 6)))
    if rng.random() < 0.02:
        a += f"如有疑问可拨打1{rng.choice('3589')}{rng.randrange(10**9):09d}咨询。"
    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if rng.random() < 0.2:
        msgs += [{"role": "user", "content": f"如果是{rng.choice(ZH_SUBJECTS)}呢？"},
                 {"role": "assistant", "content": f"道理是一样的，{rng.choice(ZH_ACTIONS)}。"}]
    if rng.random() < 0.3:
        msgs.insert(0, {"role": "system", "content": "你是一名熟悉交通法规的助手。"})
    return {"messages": msgs}


def en_record(rng: random.Random) -> dict:
    q = f"What should {rng.choice(EN_SUBJECTS)} do when they {rng.choice(EN_SITUATIONS)}?"
    a = " ".join(f"They {rng.choice(EN_ACTIONS)}, {rng.choice(EN_REASONS)}." for _ in range(rng.randint(2, 5)))
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def make(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        r = rng.random()
        if rows and r < 0.03:
            rows.append(json.loads(json.dumps(rng.choice(rows))))  # exact duplicate
        elif rows and r < 0.08:
            row = json.loads(json.dumps(rng.choice(rows)))  # near duplicate: one character changed
            a = row["messages"][-1]["content"]
            k = rng.randrange(len(a))
            row["messages"][-1]["content"] = a[:k] + "某" + a[k + 1:]
            rows.append(row)
        else:
            rows.append(zh_record(rng) if rng.random() < 0.8 else en_record(rng))
    return rows


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--model", help="HF folder: add the token-length checks")
    ap.add_argument("--cutoff", type=int, default=1024)
    ap.add_argument("--keep", help="also keep the generated dataset here")
    args = ap.parse_args()

    from lorakit.data.check import check

    base = peak_mb()
    rows = make(args.records)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp()) / "bench.jsonl"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    size_mb = tmp.stat().st_size / 2**20
    del rows
    tokenizer = None
    if args.model:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    print(f"{args.records} records, {size_mb:.1f} MB JSONL; {os.cpu_count()} CPU(s) visible; "
          f"python {sys.version.split()[0]}")
    before = peak_mb()
    t0 = time.perf_counter()
    report = check(tmp, tokenizer=tokenizer, model=args.model, cutoff=args.cutoff if args.model else None)
    dt = time.perf_counter() - t0
    counts = {k: v for k, v in report.counts().items() if v}
    print(f"findings: {counts}")
    print(f"check: {dt:.1f} s, {args.records / dt:,.0f} records/s; peak memory {peak_mb():.0f} MB "
          f"(process before check {before:.0f} MB, interpreter + imports {base:.0f} MB)")
    ok = dt < 60 and peak_mb() < 2048
    print("goal (< 60 s, < 2 GB):", "met" if ok else "NOT met")
    if not args.keep:
        tmp.unlink()


if __name__ == "__main__":
    main()
