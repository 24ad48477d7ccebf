"""Builders of pymq's three extension modules: native/ (the shared-memory ring)
into pymq._native and codec/ (the persistence log's batch encoder) into
pymq._codec, both with cffi; fastpath/ (the client's hot calls, CPython C-API)
into pymq._fast, a setuptools Extension.

Used by setuptools (``cffi_modules`` in setup.py) for ``pip install .``, and run
directly (``python build.py``) to build both in place for development. Set
PYMQ_SANITIZE=1 to build with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

import os
import shutil
import pathlib
import sys

if not sys.platform.startswith("linux"):
    sys.exit(f"pymq builds and runs on Linux only, not {sys.platform}: its native core needs "
             "futexes, robust process-shared mutexes and a /dev/shm tmpfs")

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
NATIVE = HERE / "native"
SOURCES = ["ring.c", "group.c", "ack.c", "sync.c", "ns.c"]
CODEC = HERE / "codec"
FASTPATH = HERE / "fastpath"

CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
LDFLAGS = []
if os.environ.get("PYMQ_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    CFLAGS = [f for f in CFLAGS if f != "-O2"] + ["-O1", "-g"] + san
    LDFLAGS += san


def cffi_module(root, name: str, cdef: str, folder: pathlib.Path, headers, sources):
    """A cffi builder of module name from the C files of folder, with paths
    relative to root (setuptools wants them relative)."""
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        name,
        "".join(f'#include "{h}"\n' for h in headers),
        sources=[os.path.relpath(folder / s, root) for s in sources],
        include_dirs=[os.path.relpath(folder, root)],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        libraries=["pthread"],
    )
    return ffi


def make_ffi(root):
    """The builder of pymq._native: the ring."""
    return cffi_module(root, "pymq._native", (NATIVE / "pmq_cdef.h").read_text(), NATIVE,
                       ["pmq_ring.h", "pmq_ns.h"], SOURCES)


def make_codec(root):
    """The builder of pymq._codec (declarations as in codec/pmq_jsonl.h)."""
    return cffi_module(root, "pymq._codec", """
        #define PMQ_JSONL_FRAME 80
        uint64_t pmq_jsonl_line_max(uint32_t len);
        int64_t pmq_jsonl_encode(const char *buf, uint64_t buflen, const uint64_t *offs,
                                 const uint32_t *lens, const uint64_t *seqs, const int64_t *ts_ns,
                                 uint32_t n, char *out, uint64_t out_cap, uint64_t *ends);
    """, CODEC, ["pmq_jsonl.h"], ["pmq_jsonl.c"])


def fast_extension(root=None):
    """pymq._fast, a plain CPython extension (setuptools Extension): paths
    relative to root for setuptools, absolute without one."""
    from setuptools import Extension
    rel = (lambda p: os.path.relpath(p, root)) if root else str
    return Extension("pymq._fast", sources=[rel(FASTPATH / "pmq_fast.c")],
                     include_dirs=[rel(NATIVE)], extra_compile_args=CFLAGS,
                     extra_link_args=LDFLAGS)


def build_fast(tmp: pathlib.Path) -> pathlib.Path:
    """Build pymq._fast into tmp; returns the .so."""
    from setuptools import Distribution
    dist = Distribution({"name": "pymq-fast", "ext_modules": [fast_extension()]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_temp, cmd.build_lib = str(tmp / "fast-temp"), str(tmp / "fast-lib")
    cmd.ensure_finalized()
    cmd.run()
    return next((tmp / "fast-lib" / "pymq").glob("_fast*.so"))


ffibuilder = make_ffi(HERE)
codecbuilder = make_codec(HERE)

if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build pymq._native, pymq._codec and pymq._fast in place")
    ap.add_argument("--into", default=str(HERE / "pymq"), help="package folder to copy them into")
    dest = pathlib.Path(ap.parse_args().into)
    tmp = pathlib.Path(os.environ.get("PYMQ_BUILD_DIR", HERE / "build" / "cffi")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    for name, build in (("_native", lambda: make_ffi(tmp).compile(tmpdir=str(tmp))),
                        ("_codec", lambda: make_codec(tmp).compile(tmpdir=str(tmp))),
                        ("_fast", lambda: build_fast(tmp))):
        so = build()
        for old in dest.glob(f"{name}*.so"):  # e.g. an editable install's abi3 build
            old.unlink()
        shutil.copy(so, dest)
