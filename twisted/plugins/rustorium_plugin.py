"""
The twistd plugin for the Rustorium server: ``twistd -n rustorium``.

Kept to one line of wiring so that a plugin scan (which imports every module
in ``twisted/plugins``) never imports the server, its reactor or a database
driver; ``ServiceMaker`` loads ``rustorium.tap`` only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

rustorium = ServiceMaker(
    "Rustorium",
    "rustorium.tap",
    "The Rustorium WebSocket API server (market data, token updates, transactions).",
    "rustorium",
)
