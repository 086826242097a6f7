"""Build of the one compiled module, skydns._hits (everything else is in setup.cfg).

The module is optional: where it does not build (no C compiler or no Python headers), the
package installs without it and skydns answers with the Python loop it mirrors
(skydns/_hits.c has the rules; the log line "serving DNS on ..." at start-up says which runs).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("skydns._hits", ["skydns/_hits.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
