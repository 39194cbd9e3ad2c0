"""cffi (API mode) builders for the two extension modules built from ``cext/``:

* ``pyvirtiofsd._cext`` (:data:`ffibuilder`): the daemon's C -- descriptor chains, guest
  memory, the hot path, file-system helpers, the sandbox and the seccomp filter.
* ``pyvirtiofsd._testkit`` (:data:`testkit_builder`): what only the test front-end and the
  benchmark run -- the driver side of a virtqueue, the benchmark loop, the front-end's DAX
  window.  The daemon never imports it, so the sandboxed process carries none of that code
  (ARCHITECTURE.md: "The daemon loads only the daemon").

Every ``cext/NAME.c`` belongs to exactly one of them (:data:`TESTKIT` names the test kit's;
every other one is the daemon's).  A module contributes its ``NAME.h`` header's declarations
between the ``CFFI-BEGIN`` and ``CFFI-END`` markers to its extension's cdef, so a new C
module needs no edit here unless it is a test kit's: add ``foo.c`` and ``foo.h`` with
markers.

A header-only module (a ``NAME.h`` without ``NAME.c``) must be listed in
:data:`SHARED_HEADERS`: its marked declarations go into the cdef of *both* extensions,
ahead of the modules' own (so their marked blocks may use its types), and both include it.
It can hold only what needs no object code -- types, enums and ``#define`` constants --
since there is no source file to compile (``fusewire.h``: the FUSE wire structs).

The marked text is real C that the compiler sees too.  Two conventions let a struct show
cffi only its public fields: a line ending in ``// C only`` is left out of the cdef, and
``/*cffi: TEXT */`` (a C comment) becomes TEXT in the cdef, e.g. ``/*cffi: ...; */`` to
let cffi take the rest of the layout from the compiler.
"""
import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
MARKED = re.compile(r"/\* CFFI-BEGIN \*/(.*?)/\* CFFI-END \*/", re.S)
C_ONLY = re.compile(r"^.*// C only\s*$", re.M)
CFFI_ONLY = re.compile(r"/\*cffi:(.*?)\*/", re.S)

# The test kit's C modules (NAME.c + NAME.h).  They call nothing of the daemon's modules and
# the daemon calls nothing of theirs (bench.c uses driver.c only), so each extension links
# its own sources and no source file is compiled into both.
TESTKIT = ("driver", "bench", "window")

# Header-only modules (NAME.h, no NAME.c) whose marked declarations both extensions get.
SHARED_HEADERS = ("fusewire",)

COMPILE_ARGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-fno-strict-aliasing"]


def _cdef(text: str) -> str:
    return CFFI_ONLY.sub(r"\1", C_ONLY.sub("", text))


def _rel(path: pathlib.Path) -> str:
    # setuptools wants source paths relative to the project root when it can have them.
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _modules() -> tuple[list[str], list[str]]:
    """(daemon modules, test kit modules), each a sorted list of C module names."""
    names = sorted(p.stem for p in HERE.glob("*.c"))
    headers = {p.stem for p in HERE.glob("*.h")}
    shared_with_c = sorted(set(SHARED_HEADERS) & set(names))
    if shared_with_c:
        raise RuntimeError(f"cext/build.py: SHARED_HEADERS are header-only, but these have a .c: "
                           f"{shared_with_c}")
    missing = sorted(set(SHARED_HEADERS) - headers)
    if missing:
        raise RuntimeError(f"cext/build.py: SHARED_HEADERS names headers that do not exist: {missing}")
    unpaired = sorted((headers - set(SHARED_HEADERS)) ^ set(names))
    if unpaired:
        raise RuntimeError(f"cext/: every module is a NAME.c with its NAME.h (or a header-only one "
                           f"listed in SHARED_HEADERS); unpaired: {unpaired}")
    missing = [n for n in TESTKIT if n not in names]
    if missing:
        raise RuntimeError(f"cext/build.py: TESTKIT names modules that do not exist: {missing}")
    return [n for n in names if n not in TESTKIT], [n for n in names if n in TESTKIT]


def _builder(module: str, names: list[str], **kw) -> FFI:
    # The shared headers first: the modules' marked blocks may use their types.
    headers = [HERE / f"{n}.h" for n in (*SHARED_HEADERS, *names)]
    builder = FFI()
    builder.cdef("\n".join(_cdef(m) for h in headers for m in MARKED.findall(h.read_text())))
    builder.set_source(
        module,
        "\n".join(f'#include "{h.name}"' for h in headers),
        sources=[_rel(HERE / f"{n}.c") for n in names],
        include_dirs=[str(HERE)],
        extra_compile_args=COMPILE_ARGS + os.environ.get("PYVIRTIOFSD_CFLAGS", "").split(),
        extra_link_args=os.environ.get("PYVIRTIOFSD_LDFLAGS", "").split(),
        **kw,
    )
    return builder


DAEMON_MODULES, TESTKIT_MODULES = _modules()

ffibuilder = _builder("pyvirtiofsd._cext", DAEMON_MODULES,
                      libraries=["seccomp"])  # seccomp_filter.c: libseccomp-dev (scripts/setup.sh)
testkit_builder = _builder("pyvirtiofsd._testkit", TESTKIT_MODULES)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    testkit_builder.compile(verbose=True)
