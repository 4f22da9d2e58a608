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


EXPECTED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data",
                        "conformance_cpu_expected.txt")


def expected_path(device: str = "CPU") -> str:
    return EXPECTED.replace("_cpu_", f"_{device.lower()}_")


def read_expected(device: str = "CPU") -> set[str]:
    path = expected_path(device)
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def write_expected(names: list[str], device: str = "CPU") -> None:
    path = expected_path(device)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# ONNX backend-suite cases that pass on {device}; a case listed here that fails is a\n"
                "# regression. Regenerate with: python scripts/conformance.py --update-expected\n")
        f.write("\n".join(names) + "\n")


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
    p.add_argument("--update-expected", action="store_true",
                   help=f"rewrite {os.path.relpath(EXPECTED)} with every case that passes now")
    args = p.parse_args(argv)
    result = run(args.filter, args.device, args.show_failures, args.output)
    if args.update_expected:
        if args.filter:
            p.error("--update-expected needs the whole suite (no -k)")
        passed = sorted(n for n, r in result["cases"].items() if r["status"] == "passed")
        write_expected(passed, args.device)
        print(f"wrote {len(passed)} expected passes to {expected_path(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
