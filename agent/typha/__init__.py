"""calico-typha: one datastore watch fanned out to many calico-nodes (TCP 5473).

``python -m agent.typha``; the server is :class:`agent.typha.server.TyphaServer`, the
wire format and the client are in :mod:`datastore.typha`.
"""
