"""Long fuzzing runs of kilnrt's untrusted inputs (kilnrt.fuzzing): mutated ONNX models and
mutated plans with recomputed checksums.  Every case must run or fail with a KilnError.

    python scripts/fuzz.py --onnx 50000 --plans 50000 --seed 0 --out benchmarks/results/DATE-fuzz.json
    python scripts/fuzz.py --onnx 0 --plans 0 --quantized-plans 40000   # INT8/FP8 plans (REFIT, guard)

Writes the counts and the first example of each kind of bare exception.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kilnrt  # noqa: E402
from kilnrt.fuzzing import PROFILE, base_model, onnx_case, plan_case, quantized_plans, run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=int, default=1000)
    ap.add_argument("--plans", type=int, default=1000)
    ap.add_argument("--quantized-plans", type=int, default=0, help="mutations of each of three INT8/FP8 plans")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    plan = kilnrt.build(base_model(), profiles=PROFILE).serialize()
    report = {"date": datetime.date.today().isoformat(), "seed": args.seed, "sets": {}}
    sets = [("onnx", args.onnx, lambda rng: onnx_case(rng)), ("plans", args.plans, lambda rng: plan_case(rng, plan))]
    if args.quantized_plans:
        for label, data in quantized_plans().items():
            sets.append((f"plans_{label}", args.quantized_plans, lambda rng, data=data: plan_case(rng, data)))
    for label, count, make in sets:
        if not count:
            continue
        rng = random.Random(args.seed)
        bare, examples = collections.Counter(), {}
        t0 = time.perf_counter()
        for i in range(count):
            r = run(make(rng))
            if r:
                key = r.split(": ")[0]
                bare[key] += 1
                examples.setdefault(key, r)
            if (i + 1) % 5000 == 0:
                print(f"{label}: {i + 1}/{count}, {sum(bare.values())} bare", flush=True)
        report["sets"][label] = {"cases": count, "bare_exceptions": sum(bare.values()),
                                 "seconds": round(time.perf_counter() - t0, 1),
                                 "kinds": {k: {"count": v, "example": examples[k]} for k, v in bare.most_common()}}
        print(f"{label}: {count} cases, {sum(bare.values())} bare exceptions", flush=True)
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0 if all(s["bare_exceptions"] == 0 for s in report["sets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
