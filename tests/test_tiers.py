"""The two test tiers of the README: `make test-fast` leaves out the end-to-end tier and still holds
most of the suite, and no test that runs something whole is in the fast tier."""

import re

import pytest
from conftest import E2E_MODULES, cli


@pytest.mark.e2e
def test_the_fast_tier_holds_most_tests_and_none_of_the_end_to_end_modules():
    out = cli("-m", "pytest", "--collect-only", "-q", "-m", "not e2e", "tests", "-p", "no:cacheprovider", timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    fast, total = map(int, re.search(r"(\d+)/(\d+) tests collected", out.stdout).groups())
    assert fast >= 0.6 * total
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert len(ids) == fast and not [i for i in ids if i.split("::")[0].rsplit("/", 1)[-1][:-3] in E2E_MODULES]
