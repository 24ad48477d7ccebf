# Only hands the two extension modules to setuptools; everything else is in
# pyproject.toml, and how they are built is in build.py.
import os
import pathlib
import sys

from setuptools import setup

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from build import fast_extension, native_extension  # noqa: E402

os.chdir(ROOT)
setup(ext_modules=[native_extension(ROOT), fast_extension(ROOT)])
