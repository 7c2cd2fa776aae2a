"""Stands in for h11_mypyc in the h11 run of the suite (see ``tests/conftest.py``).

Put first on the PYTHONPATH of every child process that run starts: the child finds
h11_mypyc "not installed", as on a machine without the ``fast`` extra, so its HTTP
engine ``auto`` is h11 and an explicit ``h11-mypyc`` fails as it would there.
"""

raise ImportError("h11_mypyc is hidden in the h11 run of the test suite (tests/conftest.py)")
