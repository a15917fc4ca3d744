"""The ctypes declarations against the header, library loading and the version check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import HEADER, REPO

import streamotter as so
from streamotter import _ffi


def header_functions() -> dict[str, str]:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = {}
    for m in re.finditer(r"SOT_API\s+([^;]*?)\b(sot_\w+)\s*\(([^)]*)\)\s*;", text, flags=re.S):
        out[m.group(2)] = " ".join(m.group(3).split())
    return out


def test_every_header_function_is_declared():
    if not HEADER.is_file():
        pytest.skip("header not found (not running from the source tree)")
    funcs = header_functions()
    assert len(funcs) >= 40
    assert set(funcs) == set(_ffi.FUNCTIONS), (set(funcs) ^ set(_ffi.FUNCTIONS))
    for name, params in funcs.items():
        restype, argtypes = _ffi.FUNCTIONS[name]
        n = 0 if params in ("void", "") else params.count(",") + 1
        assert len(argtypes) == n, f"{name}: header has {n} parameters, binding {len(argtypes)}"
        fn = getattr(_ffi.lib, name)
        assert fn.argtypes == argtypes and fn.restype is restype


def test_struct_layouts_match_header_order():
    # Field order and count of the public structs (fields are only ever appended).
    assert [f[0] for f in _ffi.sot_message._fields_] == [
        "size", "channel", "partition", "offset", "timestamp", "key", "data", "data_len", "frame", "frame_len"]
    assert [f[0] for f in _ffi.sot_record._fields_] == [
        "size", "topic", "partition", "offset", "timestamp", "key", "key_len", "value", "value_len",
        "headers", "n_headers"]
    assert [f[0] for f in _ffi.sot_client_health._fields_] == [
        "size", "state", "score", "rtt_ms", "missed_pongs", "consecutive_failures", "reconnects"]


def test_version_and_runtime_info():
    assert so.version_number() >> 16 == so.ABI_MAJOR == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", so.version())
    info = so.runtime_info()
    assert "libuv" in info and "librdkafka" in info
    assert so.library_path


def test_exception_classes_come_from_the_status_table():
    table = so.status_table()
    assert table[0][:2] == (0, "SOT_OK")
    codes = {c for c, _, _ in table if c < 0}
    assert codes == set(so.errors.by_code)
    expected = {
        "SOT_ERR_INVALID_ARG": "InvalidArgError", "SOT_ERR_CONFIG": "ConfigError",
        "SOT_ERR_STATE": "StateError", "SOT_ERR_KAFKA": "KafkaError", "SOT_ERR_IO": "IoError",
        "SOT_ERR_NOT_FOUND": "NotFoundError", "SOT_ERR_IN_CALLBACK": "InCallbackError",
        "SOT_ERR_BAD_HANDLE": "BadHandleError",
    }
    for code, name, desc in table:
        if code >= 0:
            continue
        cls = so.errors.by_code[code]
        assert issubclass(cls, so.StreamOtterError)
        assert cls.code == code and cls.name == name
        if name in expected:
            assert cls.__name__ == expected[name]
            assert getattr(so, expected[name]) is cls
        e = so.errors.error_for(code, "boom")
        assert type(e) is cls and e.code == code and e.name == name and e.message == "boom"
        assert name in str(e) and "boom" in str(e)
    assert issubclass(so.ConfigError, ValueError)
    # pickling keeps class, code and message
    import pickle

    e2 = pickle.loads(pickle.dumps(so.ConfigError(-2, "x: bad")))
    assert type(e2) is so.ConfigError and e2.code == -2 and e2.message == "x: bad"


def _run_import(env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    code = "import streamotter"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=str(REPO / "bindings" / "python"), timeout=60)


def test_missing_library_fails_clearly(tmp_path):
    r = _run_import({"STREAMOTTER_LIBRARY": str(tmp_path / "nope.so")})
    assert r.returncode != 0
    assert "LibraryLoadError" in r.stderr and "STREAMOTTER_LIBRARY" in r.stderr


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
def test_wrong_major_fails_clearly(tmp_path):
    src = tmp_path / "fake.c"
    src.write_text(textwrap.dedent("""
        int sot_version_number(void) { return (1 << 16) | (2 << 8) | 3; }
        const char *sot_version(void) { return "1.2.3"; }
    """))
    so_path = tmp_path / "libstreamotter.so.1"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so_path), str(src)], check=True)
    r = _run_import({"STREAMOTTER_LIBRARY": str(so_path)})
    assert r.returncode != 0
    assert "LibraryLoadError" in r.stderr
    assert "1.2.3" in r.stderr and "ABI major 1" in r.stderr and "needs ABI major 0" in r.stderr
