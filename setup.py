# Only hands the cffi builder to setuptools; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder", "build.py:codecbuilder"])
