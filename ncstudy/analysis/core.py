"""Deprecated alias of :mod:`ncstudy.analyze.pipeline` (importing it warns and returns that module)."""
from ncstudy.deprecation import alias_module

alias_module(__name__, "ncstudy.analyze.pipeline")
