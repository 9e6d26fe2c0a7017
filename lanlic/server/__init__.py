"""The server's side on disk: its data folder (``datadir``) and the embedded demo (``demo``).
The server's network adapter is ``lanlic.net.server``; its database is ``lanlic.store``."""
