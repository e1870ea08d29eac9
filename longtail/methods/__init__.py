"""One module per paper, beside ``base`` (the ``Method`` interface and registry), ``runs`` (what methods and
the engine share about runs) and ``recipes`` (recipes resolved: options checked against their factories, the
budget applied). Importing this package registers every method's losses and models."""

from longtail.methods import deit_lt  # noqa: F401
from longtail.methods import mdcs  # noqa: F401
from longtail.methods import p2ot  # noqa: F401
from longtail.methods import ride  # noqa: F401
from longtail.methods import shike  # noqa: F401
from longtail.methods import simclr  # noqa: F401
