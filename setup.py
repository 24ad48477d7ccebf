# Only hands the builders to setuptools; everything else is in pyproject.toml.
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import fast_extension  # noqa: E402

setup(cffi_modules=["build.py:ffibuilder", "build.py:codecbuilder"],
      ext_modules=[fast_extension(os.path.dirname(os.path.abspath(__file__)))])
