"""
Rustorium: a WebSocket API server for market data, token updates and
transactions on a simulated chain, built on Twisted and Autobahn.

Run it with ``twistd -n rustorium``; embed it with
:func:`rustorium.service.makeService`.
"""

__version__ = "0.1.0"
