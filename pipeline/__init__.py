"""varseg pipeline: data sources, training engines, 2.5D slicing, handlers, tracking and the command line."""

from __future__ import annotations

from . import data, engines, handlers, inference, paths, slicing, tracking

__all__ = ["data", "engines", "handlers", "inference", "paths", "slicing", "tracking"]
