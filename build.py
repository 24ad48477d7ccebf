"""The builder of pymq's two extension modules, both as setuptools Extensions:

  pymq._native  native/ring/ (the shared-memory ring) and native/codec/ (the
                persistence log's encoder), bound with cffi (API mode);
  pymq._fast    native/py/ (the CPython fast path: publish, the Reader, the
                Message type), which calls _native's functions through the
                versioned table of native/ring/pmq_api.h.

Both are compiled with -DPMQ_BUILD_ID, a hash of every file of native/ and of
this one: _fast refuses a _native of another build, and pymq/_core.py refuses
a build that is not of the sources beside it (a stale .so after an edit).

Used by setup.py for `pip install .`, and run directly (`python build.py`) to
build both in place for development. PYMQ_SANITIZE=1 builds them with
AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import shutil
import sys

if not sys.platform.startswith("linux"):
    sys.exit(f"pymq builds and runs on Linux only, not {sys.platform}: its native core needs "
             "futexes, robust process-shared mutexes and a /dev/shm tmpfs")

HERE = pathlib.Path(__file__).resolve().parent
NATIVE = HERE / "native"
RING, CODEC, PY = NATIVE / "ring", NATIVE / "codec", NATIVE / "py"


def build_id(root: pathlib.Path = HERE) -> str:
    """A hash of the native sources and of this builder (pymq/_core.py computes
    the same in a source checkout, to find a stale build)."""
    h = hashlib.sha256()
    for path in sorted((root / "native").rglob("*")):
        if path.suffix in (".c", ".h"):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    h.update((root / "build.py").read_bytes())
    return h.hexdigest()[:16]


def cflags() -> list[str]:
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration",
             f'-DPMQ_BUILD_ID="{build_id()}"']
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mcx16")  # the 16-byte compare-and-swap of cursors and pending entries
    if os.environ.get("PYMQ_SANITIZE"):
        return flags + ["-O1", "-g"] + SANITIZE  # its speed is not measured
    # Functions on 64-byte lines and loops on 32: without them the hot paths' speed moved
    # with unrelated edits (get + ack 4-6 % slower after a change of ring.c's publish;
    # publish_batch 14 -> 16 us after one of the copy: docs/benchmarks.md)
    return flags + ["-O2", "-falign-functions=64", "-falign-loops=32"]


SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]


def ldflags() -> list[str]:
    return list(SANITIZE) if os.environ.get("PYMQ_SANITIZE") else []


def _rel(root: pathlib.Path | None):
    return (lambda p: os.path.relpath(p, root)) if root else str


def _depends(root: pathlib.Path | None) -> list[str]:
    """Every file the build id covers: a change to any rebuilds both modules."""
    rel = _rel(root)
    return [rel(p) for p in sorted(NATIVE.rglob("*")) if p.suffix in (".c", ".h")] + [
        rel(HERE / "build.py")]


def make_ffi(root: pathlib.Path | None = None):
    """The cffi builder of pymq._native (paths relative to root, which
    setuptools wants, or absolute)."""
    from cffi import FFI
    rel = _rel(root)
    ffi = FFI()
    ffi.cdef((RING / "pmq_cdef.h").read_text())
    ffi.set_source(
        "pymq._native",
        '#include "pmq_ring.h"\n#include "pmq_ns.h"\n#include "pmq_api.h"\n#include "pmq_jsonl.h"\n',
        sources=[rel(p) for p in sorted(RING.glob("*.c")) + sorted(CODEC.glob("*.c"))],
        include_dirs=[rel(RING), rel(CODEC)],
        extra_compile_args=cflags(),
        extra_link_args=ldflags(),
        libraries=["pthread"],
    )
    return ffi


def native_extension(root: pathlib.Path | None = None, tmp: pathlib.Path | None = None):
    """pymq._native as a setuptools Extension (cffi writes its C source into tmp)."""
    tmp = tmp or (HERE / "build" / "cffi-src")
    tmp.mkdir(parents=True, exist_ok=True)
    ext = make_ffi(root).distutils_extension(tmpdir=_rel(root)(tmp), verbose=False)
    ext.depends = _depends(root)
    return ext


def fast_extension(root: pathlib.Path | None = None):
    """pymq._fast as a setuptools Extension."""
    from setuptools import Extension
    rel = _rel(root)
    return Extension("pymq._fast", sources=[rel(p) for p in sorted(PY.glob("*.c"))],
                     include_dirs=[rel(RING), rel(PY)], extra_compile_args=cflags(),
                     extra_link_args=ldflags(), depends=_depends(root))


def build_in_place(dest: pathlib.Path, tmp: pathlib.Path) -> None:
    """Build both into tmp with setuptools' build_ext and copy them into dest."""
    from setuptools import Distribution
    dist = Distribution({"name": "pymq-shm",
                         "ext_modules": [native_extension(tmp=tmp / "src"), fast_extension()]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_temp, cmd.build_lib = str(tmp / "temp"), str(tmp / "lib")
    cmd.ensure_finalized()
    cmd.run()
    for name in ("_native", "_fast"):
        for old in dest.glob(f"{name}*.so"):  # an editable install's abi3 build, say
            old.unlink()
        shutil.copy(next((tmp / "lib" / "pymq").glob(f"{name}*.so")), dest)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build pymq._native and pymq._fast in place")
    ap.add_argument("--into", default=str(HERE / "pymq"), help="package folder to copy them into")
    args = ap.parse_args()
    build_in_place(pathlib.Path(args.into),
                   pathlib.Path(os.environ.get("PYMQ_BUILD_DIR", HERE / "build" / "ext")).resolve())
