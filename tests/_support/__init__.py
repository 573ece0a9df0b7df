"""Toys shared by several test folders: one copy each, imported as `_support.<module>`.

`pyproject.toml` puts `tests/` on pytest's `pythonpath`, so `import _support` works from every test folder (a
top-level `tests` package would be shadowed by the one latex2sympy2, an lm-eval dependency, installs).
"""
