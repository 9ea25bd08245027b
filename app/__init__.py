"""The posbench dashboard (Dash): browse every stored run, its summary, tables and figures.

    posbench dashboard [--store PATH]   (default: the shared results store)

Installed as ``posbench.app``. Callbacks are thin: they ask ``ResultsService`` (read-only over
the results store) and render what it returns; figures are rebuilt from stored tables.
"""

from .dashboard import create_app
from .service import ResultsService

__all__ = ["ResultsService", "create_app"]
