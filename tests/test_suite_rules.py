"""Rules the suite keeps so CI does not flake on a busy machine: every wait in the browser tests
names a timeout of at least 60 s (Playwright's expect() waits 5 s by default, whatever the page's
default timeout says), and no browser test sleeps instead of waiting on the page's state."""

from __future__ import annotations

import ast

from conftest import REPO

BROWSER_TESTS = REPO / "tests" / "test_browser.py"
WAITS = {"wait_for", "wait_for_selector", "wait_for_function", "wait_for_url", "wait_for_load_state"}
MIN_MS = 60_000


def _constants(tree: ast.Module) -> dict[str, int]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _timeout_ms(call: ast.Call, constants: dict[str, int]) -> int | None:
    for keyword in call.keywords:
        if keyword.arg == "timeout":
            value = keyword.value
            if isinstance(value, ast.Constant):
                return value.value
            if isinstance(value, ast.Name):
                return constants.get(value.id)
    return None


def test_every_browser_wait_and_expectation_names_a_generous_timeout():
    tree = ast.parse(BROWSER_TESTS.read_text())
    constants = _constants(tree)
    short = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr
        # expect(locator).to_be_visible(...), .to_have_count(...): an assertion on an expect() call
        is_expectation = name.startswith("to_") and isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", "") == "expect"
        if name in WAITS or is_expectation:
            timeout = _timeout_ms(node, constants)
            if timeout is None or timeout < MIN_MS:
                short.append(f"line {node.lineno}: .{name}(...) timeout={timeout}")
    assert not short, "waits without an explicit timeout of at least 60 s:\n" + "\n".join(short)


def test_browser_tests_wait_on_the_page_not_on_the_clock():
    tree = ast.parse(BROWSER_TESTS.read_text())
    sleeps = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("sleep", "wait_for_timeout")
              and not _inside_server_start(tree, node)]
    assert not sleeps, f"fixed sleeps in the browser tests at lines {sleeps}: wait for the page's state instead"


def _inside_server_start(tree: ast.Module, call: ast.Call) -> bool:
    """The server fixture polls the health endpoint between tries: the only sleep allowed."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "server":
            return any(inner is call for inner in ast.walk(node))
    return False
