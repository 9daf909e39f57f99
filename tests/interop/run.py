"""Runs the interop suite and ends with a plain 'N passed, N failed, N skipped' line.

    .venv/bin/python tests/interop/run.py [--label NAME] [unittest name patterns...]

See broker.py for the environment it reads (INTEROP_BROKER_URL, DISPATCH_BROKER_BIN, CI).
"""

import argparse
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="interop", help="name on the closing line")
    parser.add_argument("-k", dest="patterns", action="append", help="only tests matching")
    args = parser.parse_args()

    sys.path.insert(0, HERE)
    loader = unittest.TestLoader()
    loader.testNamePatterns = [f"*{p}*" for p in args.patterns or []] or None
    target = os.environ.get("INTEROP_BROKER_URL") or "a dispatch-broker per test class"
    print(f"interop tests against {target}", flush=True)
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)

    # A setUpClass error or skip is reported against the class, not a test of the run.
    problems = result.failures + result.errors + [(t, "") for t in result.unexpectedSuccesses]
    failed = len(problems)
    skipped = len(result.skipped)
    in_run = [t for t, _ in problems + result.skipped if isinstance(t, unittest.TestCase)]
    passed = result.testsRun - len(in_run)
    print(f"{args.label}: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
