"""The HTTP layer: an aiohttp application over ``registry.Registry``."""

from .app import create_app

__all__ = ["create_app"]
