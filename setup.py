"""The optional C core of the tree edit distance (src/vlm/evaluation/_ted.c, _walk.c); the rest is in pyproject.toml.

``optional=True``: where no C compiler is at hand the install still succeeds, and vlm scores in pure Python
instead (the same distances, more slowly; ``vlm.evaluation.ted`` picks what is there).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("vlm.evaluation._ted", ["src/vlm/evaluation/_ted.c", "src/vlm/evaluation/_walk.c"], optional=True, extra_compile_args=["-O2"])])
