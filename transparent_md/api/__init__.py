"""The local admin API: VM managers and orchestrators write records over a unix socket.

`operations` holds the record writes every writer shares (the API, `instance
bind/park`, the libvirt hook): create-or-replace, JSON merge patch, bind, park, delete,
each conditional on a revision when asked. `routes` maps HTTP requests onto them,
`server` serves them from a thread of its own, and `client` speaks to a running daemon.
"""
