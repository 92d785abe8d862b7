"""Corral: self-hosted fleet operations over an outbound agent channel."""

__version__ = "0.1.0"

__all__ = ["__version__"]
