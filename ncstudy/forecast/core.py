"""Deprecated alias of :mod:`ncstudy.forecast.protocol` (importing it warns and returns that module)."""
from ncstudy.deprecation import alias_module

alias_module(__name__, "ncstudy.forecast.protocol")
