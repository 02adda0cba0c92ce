"""
Fixtures for the broker tests: a throwaway Redis (L{tests.redis_server}).
"""

from ..redis_server import redis_server  # noqa: F401
