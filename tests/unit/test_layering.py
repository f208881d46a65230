"""The SIP adapter stays below the call flows: sip/ never imports what runs the calls."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What sip/ must not import: the flows, their records, the worker process and its IPC.
FORBIDDEN = ("daemon.calls", "daemon.store", "daemon.outbound", "daemon.worker", "daemon.ipc")


def imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path`` (a module of ``package``), at any depth
    (functions included); ``from a import b`` yields both ``a`` and ``a.b``, so a submodule
    imported by name counts."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _package(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).parts[:-1])


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_sip_imports_nothing_of_the_call_flows() -> None:
    """No module under sip/ imports daemon.calls, store, outbound, worker or ipc, not even
    inside a function."""
    files = sorted((ROOT / "sip").rglob("*.py"))
    assert len(files) > 10, files
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path, _package(path))
        if _forbidden(module)
    ]
    assert not found, "sip/ must stay below the call flows:\n" + "\n".join(found)


def test_the_import_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The walk finds an import hidden in a function body and one written relatively."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..calls import flow\n    import daemon.ipc\n")
    walked = {module for _, module in imported_modules(probe, "daemon.legs")}
    assert walked == {"daemon.calls", "daemon.calls.flow", "daemon.ipc"}, walked
    assert all(_forbidden(module) for module in walked)


def test_call_flows_import_nothing_of_sip() -> None:
    """No module under daemon/calls imports sip, not even inside a function: the flows see a
    call only through the call leg, so they run on a pjsua2 call or an in-memory leg alike."""
    files = sorted((ROOT / "daemon" / "calls").rglob("*.py"))
    assert len(files) > 5, files
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path, _package(path))
        if module == "sip" or module.startswith("sip.")
    ]
    assert not found, "daemon/calls must not import sip:\n" + "\n".join(found)


# The browser side: what aiortc brings (ICE, DTLS, SRTP, Opus, libav) stays out of the rest.
BROWSER_LIBRARIES = ("aiortc", "aioice", "av", "pylibsrtp")
BROWSER_SIDE = ("daemon.legs.webrtc", "daemon.web")
KEPT_OUT = ("sip", "daemon/worker", "daemon/calls", "api")


def _is(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_only_the_browser_side_imports_aiortc() -> None:
    """aiortc and its libraries (and the modules that use them) are imported by the browser
    leg and the web worker only: never by sip/, the SIP worker, the call flows or the API, so a
    SIP worker never loads them and its media clock never shares a GIL with them."""
    files = {
        path: ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for top in ("api", "config", "daemon", "media", "sip")
        for path in sorted((ROOT / top).rglob("*.py"))
    }
    importers = {
        name: sorted({m for _, m in imported_modules(path, _package(path))})
        for path, name in files.items()
    }
    users = sorted(
        name
        for name, modules in importers.items()
        if any(_is(m, BROWSER_LIBRARIES) for m in modules)
    )
    assert "daemon.legs.webrtc" in users, users  # the walk sees the browser leg's imports
    assert [u for u in users if not _is(u, BROWSER_SIDE)] == [], users
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in files
        if any(path.relative_to(ROOT).as_posix().startswith(top + "/") for top in KEPT_OUT)
        for line, module in imported_modules(path, _package(path))
        if _is(module, BROWSER_LIBRARIES + BROWSER_SIDE)
    ]
    assert not found, "the browser side must stay out of SIP, flows and API:\n" + "\n".join(found)
    legs = ROOT / "daemon" / "legs" / "__init__.py"
    assert not [m for _, m in imported_modules(legs, "daemon.legs") if _is(m, BROWSER_SIDE)]
