"""Deprecated: this module was split by job. The stopper core (:class:`OnsetStopperCore`, formerly
``FnStarCore``) is :mod:`ncstudy.adapters.stopper_core`, the result keys it reads
(:class:`MetricNames`) :mod:`ncstudy.adapters.metric_names`, its state stores (:class:`StateStore`,
:class:`LocalStore`) :mod:`ncstudy.adapters.state_store`. Every name this module had still imports
from here for a release, with a :class:`DeprecationWarning` naming its new module.
"""
from ncstudy.deprecation import moved_names

_STOPPER_CORE, _SETTINGS = "ncstudy.adapters.stopper_core", "ncstudy.forecast.settings"
__getattr__ = moved_names(__name__, {
    "OnsetStopperCore": _STOPPER_CORE, "FnStarCore": _STOPPER_CORE, "STATE_VERSION": _STOPPER_CORE,
    "LEARN_BATCH": _STOPPER_CORE, "MAX_POOL": _STOPPER_CORE,
    "MetricNames": "ncstudy.adapters.metric_names",
    "StateStore": "ncstudy.adapters.state_store", "LocalStore": "ncstudy.adapters.state_store",
    "DEFAULT_POLICY": _SETTINGS, "DEFAULT_FORECASTER": _SETTINGS, "FORECASTER_NAMES": _SETTINGS, "MODES": _SETTINGS,
    "POLICIES": _SETTINGS,
})
