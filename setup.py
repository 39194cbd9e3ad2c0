# The C extensions are built by cffi in API mode; setup.py exists only to name the cffi
# builders: the daemon's pyvirtiofsd._cext and the test kit's pyvirtiofsd._testkit
# (the front-end's and the benchmark's C, which the daemon never loads).
from setuptools import setup

setup(cffi_modules=["cext/build.py:ffibuilder", "cext/build.py:testkit_builder"])
