"""Run ONNX's backend conformance suite against kilnrt and record every case's result.

    python scripts/conformance.py                     # all CPU cases -> conformance-results.json
    python scripts/conformance.py -k test_resize      # only cases whose name contains a substring
    python scripts/conformance.py --show-failures     # print each failure's reason

The suite is ``onnx.backend.test.BackendTest(kilnrt.backend)``, unmodified: the count's
denominator is every CPU case it generates.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unittest
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def suite_cases(device: str = "CPU"):
    import onnx.backend.test

    import kilnrt.backend as backend

    bt = onnx.backend.test.BackendTest(backend, __name__)
    cases = {}
    for name, case in bt.test_cases.items():
        for test_name in unittest.TestLoader().getTestCaseNames(case):
            if test_name.endswith(f"_{device.lower()}"):
                cases[test_name] = (case, test_name)
    return cases


def run(filter_: str | None, device: str, show: bool, out: str | None) -> dict:
    cases = suite_cases(device)
    results = {}
    t0 = time.time()
    for name in sorted(cases):
        if filter_ and filter_ not in name:
            continue
        case, test_name = cases[name]
        res = unittest.TestResult()
        case(test_name).run(res)
        if res.skipped:
            status, why = "skipped", res.skipped[0][1]
        elif res.errors or res.failures:
            status = "failed"
            tb = (res.errors or res.failures)[0][1].strip().splitlines()
            why = tb[-1][:400] if tb else ""
        else:
            status, why = "passed", ""
        results[name] = {"status": status, "reason": why}
        if show and status != "passed":
            print(f"{name}: {status}: {why}")
    passed = sum(r["status"] == "passed" for r in results.values())
    summary = {"device": device, "total": len(results), "passed": passed,
               "failed": sum(r["status"] == "failed" for r in results.values()),
               "skipped": sum(r["status"] == "skipped" for r in results.values()),
               "seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary))
    if out:
        with open(out, "w") as f:
            json.dump({"summary": summary, "cases": results}, f, indent=1, sort_keys=True)
    return {"summary": summary, "cases": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-k", dest="filter", help="only cases whose name contains this")
    p.add_argument("--device", default="CPU", choices=["CPU", "CUDA"])
    p.add_argument("--show-failures", action="store_true")
    p.add_argument("-o", "--output", default=None, help="write per-case results as JSON")
    args = p.parse_args(argv)
    run(args.filter, args.device, args.show_failures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
