# The C extensions are built by cffi in API mode; setup.py exists only to name the cffi
# builders: the daemon's pyvirtiofsd._cext and the test kit's pyvirtiofsd._testkit
# (the front-end's and the benchmark's C, which the daemon never loads) -- and to link the
# sandbox supervisor, a small C program beside them (cext/supervisor/).
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

SUPERVISOR = "pyvirtiofsd-supervisor"
SUPERVISOR_SOURCES = ["cext/supervisor/supervisor.c", "cext/seccomp_filter.c"]


class BuildExtAndSupervisor(build_ext):
    """build_ext, then the supervisor executable into the package directory the modules go
    to (the source tree for --inplace and editable installs, the wheel's otherwise)."""

    def run(self):
        super().run()
        compiler = self.compiler
        objects = compiler.compile(SUPERVISOR_SOURCES, output_dir=self.build_temp,
                                   include_dirs=["cext"],
                                   extra_postargs=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                                   "-Wno-unused-parameter"])
        target = self._supervisor_path()
        # A fresh inode, as scripts/build-ext.sh does for the modules: a running supervisor
        # keeps its own.
        tmp = target + ".new"
        compiler.link_executable(objects, os.path.basename(tmp),
                                 output_dir=os.path.dirname(tmp), libraries=["seccomp"])
        os.replace(tmp, target)

    def _supervisor_path(self) -> str:
        if self.inplace or getattr(self, "editable_mode", False):
            package_dir = self.get_finalized_command("build_py").get_package_dir("pyvirtiofsd")
        else:
            package_dir = os.path.join(self.build_lib, "pyvirtiofsd")
        os.makedirs(package_dir, exist_ok=True)
        return os.path.join(package_dir, SUPERVISOR)

    def get_outputs(self):
        return [*super().get_outputs(), self._supervisor_path()]


setup(cffi_modules=["cext/build.py:ffibuilder", "cext/build.py:testkit_builder"],
      cmdclass={"build_ext": BuildExtAndSupervisor})
