"""The bad-input matrix: a package, so that its one worker is package-scoped (see conftest.py)."""
