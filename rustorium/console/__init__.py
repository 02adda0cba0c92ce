"""
The operator console: a page in the browser, served by the server itself
at C{/admin/}, that shows the cluster live (connections, subscriptions,
message rates, blocks, prices, transactions) and steers it (API keys,
connections), for a person signed in with an C{admin} key.

- L{rustorium.console.resource}: the pages, files and calls under
  C{/admin/}, and the HTTP API mounted for the console's session;
- L{rustorium.console.sessions}: who is signed in (in this node's memory);
- L{rustorium.console.security}: the cookie, CSRF and
  Content-Security-Policy rules;
- L{rustorium.console.monitor}: the figures sampled every second and the
  taps on the fan-out;
- L{rustorium.console.events}: one browser's server-sent events;
- C{static/}: the page, its ES modules (no build step) and the vendored
  uPlot chart library (MIT, its licence beside it).

C{docs/console.rst} tells operators how to use it.
"""

from .monitor import Monitor
from .resource import Console
from .sessions import SessionStore

__all__ = ["Console", "Monitor", "SessionStore"]
