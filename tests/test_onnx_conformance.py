"""ONNX's own backend conformance suite, run against kilnrt on the CPU.

Every case listed in tests/data/conformance_cpu_expected.txt must still pass (a failure
there is a regression); a case that passes but is not listed must be added to the list
(`python scripts/conformance.py --update-expected`), so the count only moves up.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import conformance  # noqa: E402


@pytest.fixture(scope="module")
def results():
    return conformance.run(None, "CPU", show=False, out=None)


def test_suite_denominator_is_whole(results):
    assert results["summary"]["total"] == len(conformance.suite_cases("CPU")) >= 2000


def test_no_regressions(results):
    expected = conformance.read_expected("CPU")
    assert expected, "tests/data/conformance_cpu_expected.txt is missing"
    broken = sorted(n for n in expected if results["cases"].get(n, {}).get("status") != "passed")
    detail = "\n".join(f"  {n}: {results['cases'].get(n, {}).get('reason', 'not run')}" for n in broken[:30])
    assert not broken, f"{len(broken)} conformance case(s) that passed before now fail:\n{detail}"


def test_expected_list_is_current(results):
    expected = conformance.read_expected("CPU")
    new = sorted(n for n, r in results["cases"].items() if r["status"] == "passed" and n not in expected)
    assert not new, (f"{len(new)} case(s) pass but are not in the expected list (e.g. {new[:5]}); "
                     "run `python scripts/conformance.py --update-expected`")
    print(f"\nONNX conformance (CPU): {results['summary']['passed']} / {results['summary']['total']} pass")


def test_operators_doc_is_current():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_operators.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
