"""The version of causalcell (read by the build backend and written into saved files)."""

__version__ = "0.1.0.dev0"
