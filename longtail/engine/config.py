"""Alias of :mod:`longtail.config`, which moved below the methods so that they need not import the engine
(issue 18); kept for scripts that import ``longtail.engine.config``."""

from longtail.config import *  # noqa: F403
