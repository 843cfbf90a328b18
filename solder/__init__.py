"""Solder: a self-hostable engine for embedded integrations."""

from __future__ import annotations

__version__ = "0.1.0"
API_VERSION = "2025-09"
