# The C extension is built by cffi in API mode; setup.py exists only to name the cffi builder.
from setuptools import setup

setup(cffi_modules=["cext/build.py:ffibuilder"])
