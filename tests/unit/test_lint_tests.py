"""tests/lint_tests.py: it finds tests that cannot fail, and the real tree has none."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests import lint_tests

ROOT = Path(__file__).resolve().parents[2]

# The bad examples spell the pattern as OR_TRUE, so no grep for it mistakes this
# file's sources for a real test that cannot fail.
OR_TRUE = "or " + "True"
HELPERS = '''
def check(x):
    assert x

def fail_unless(x):
    if not x:
        raise AssertionError(x)

def relay(x):
    check(x)

def relay_twice(x):
    relay(x)

def quiet(x):
    return x

def hedged(x):
    assert x OR_TRUE
'''.replace("OR_TRUE", OR_TRUE)

REEXPORT = '''
from tests.helpers import check
'''

GOOD = '''
import pytest
from pytest import raises
import tests.helpers
import tests.helpers as h
from tests import helpers
from tests.helpers import check, fail_unless, relay_twice
from tests.reexport import check as checked_again

def local_check(x):
    assert x

def test_assert():
    assert 1 + 1 == 2

def test_pytest_raises():
    with pytest.raises(ZeroDivisionError):
        1 / 0

def test_pytest_warns():
    with pytest.warns(UserWarning):
        pass

def test_imported_raises():
    with raises(ZeroDivisionError):
        1 / 0

def test_pytest_fail():
    pytest.fail("always")

def test_raise_assertion_error():
    raise AssertionError("always")

def test_local_helper():
    local_check(1)

def test_from_import_helper():
    check(1)

def test_helper_raising_assertion_error():
    fail_unless(1)

def test_module_alias_helper():
    h.check(1)

def test_dotted_module_helper():
    tests.helpers.check(1)

def test_package_attribute_helper():
    helpers.check(1)

def test_transitive_helper():
    relay_twice(1)

def test_reexported_helper():
    checked_again(1)

def test_nested_function_asserts():
    def inner():
        assert True is not False
    inner()

class TestGrouped:
    def test_method(self):
        assert [] == []
'''

BAD = '''
from tests.helpers import quiet

def local_quiet(x):
    return x

def test_or_true():
    assert 1 == 2 OR_TRUE

def test_assert_true():
    assert True

def test_nothing():
    x = 1

def test_quiet_helper():
    quiet(1)

def test_quiet_local_helper():
    local_quiet(1)

def test_unknown_call():
    print("looks busy")

class TestGrouped:
    def test_method(self):
        pass
'''.replace("OR_TRUE", OR_TRUE)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def run(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = lint_tests.main([str(root)])
    return code, capsys.readouterr().out.splitlines()


def test_the_real_tests_have_no_offender(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ROOT, capsys) == (0, [])


def test_good_examples_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every way a test may check (assert, pytest.raises, helpers near and far) counts."""
    write_tree(tmp_path, {"tests/__init__.py": "", "tests/helpers.py": HELPERS.replace(
        "assert x " + OR_TRUE, "assert x"), "tests/reexport.py": REEXPORT,
        "tests/test_good.py": GOOD})
    assert run(tmp_path, capsys) == (0, [])


def test_each_defect_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tree(tmp_path, {"tests/__init__.py": "", "tests/helpers.py": HELPERS,
                          "tests/reexport.py": REEXPORT, "tests/sub/__init__.py": "",
                          "tests/sub/test_bad.py": BAD, "tests/test_good.py": GOOD})
    code, lines = run(tmp_path, capsys)
    assert code == 1
    assert lines == [
        "tests/helpers.py:19: hedged asserts something that cannot fail: assert x " + OR_TRUE,
        "tests/sub/test_bad.py:8: test_or_true asserts something that cannot fail: "
        "assert 1 == 2 " + OR_TRUE,
        "tests/sub/test_bad.py:11: test_assert_true asserts something that cannot fail: "
        "assert True",
        "tests/sub/test_bad.py:13: test_nothing has no assertion",
        "tests/sub/test_bad.py:16: test_quiet_helper has no assertion",
        "tests/sub/test_bad.py:19: test_quiet_local_helper has no assertion",
        "tests/sub/test_bad.py:22: test_unknown_call has no assertion",
        "tests/sub/test_bad.py:26: test_method has no assertion",
    ]


def test_helpers_are_followed_only_a_few_calls_deep(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A chain longer than HELPER_DEPTH is not followed: the search stays bounded."""
    depth = lint_tests.HELPER_DEPTH
    chain = ["def h0():\n    assert 1 + 1 == 2\n"]
    chain += [f"def h{i}():\n    h{i - 1}()\n" for i in range(1, depth + 2)]
    tests = f"def test_near():\n    h{depth - 1}()\n\ndef test_far():\n    h{depth + 1}()\n"
    write_tree(tmp_path, {"tests/__init__.py": "",
                          "tests/test_chain.py": "\n".join(chain) + "\n" + tests})
    code, lines = run(tmp_path, capsys)
    assert (code, [line.split(": ", 1)[1] for line in lines]) == (
        1, ["test_far has no assertion"])
