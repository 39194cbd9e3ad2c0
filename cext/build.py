"""cffi (API mode) builder for ``pyvirtiofsd._cext``.

Every ``cext/*.h`` header contributes the declarations between its ``CFFI-BEGIN`` and
``CFFI-END`` markers to the cdef, and every ``cext/*.c`` file is compiled in.  A new C
module therefore needs no edit here: add ``foo.c`` and ``foo.h`` with markers.

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


def _cdef(text: str) -> str:
    return CFFI_ONLY.sub(r"\1", C_ONLY.sub("", text))


def _rel(path: pathlib.Path) -> str:
    # setuptools wants source paths relative to the project root when it can have them.
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


headers = sorted(HERE.glob("*.h"))
sources = sorted(HERE.glob("*.c"))

ffibuilder = FFI()
ffibuilder.cdef("\n".join(_cdef(m) for h in headers for m in MARKED.findall(h.read_text())))
ffibuilder.set_source(
    "pyvirtiofsd._cext",
    "\n".join(f'#include "{h.name}"' for h in headers),
    sources=[_rel(s) for s in sources],
    include_dirs=[str(HERE)],
    libraries=["seccomp"],  # seccomp_filter.c: libseccomp-dev (scripts/setup.sh)
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing"] + os.environ.get("PYVIRTIOFSD_CFLAGS", "").split(),
    extra_link_args=os.environ.get("PYVIRTIOFSD_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
