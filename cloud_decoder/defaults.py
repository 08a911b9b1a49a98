"""Defaults that ``icm cloud``'s flags share with :class:`~cloud_decoder.server.CloudConfig`.

Kept apart from ``server.py`` so that building the command line (``icm cloud --help``) needs
no import of the service and its torch, while the flag and the config read one value.
"""

from __future__ import annotations

__all__ = ["DB"]

DB = "cloud-data/cloud.sqlite3"   # SQLite path / sqlite:/// URL, or postgresql://...
