"""The lab on the machine: topology files, Mininet namespaces, their supervisor and cleanup.

- :mod:`testbed.lab.topology` - topology files -> a validated model (pure).
- :mod:`testbed.lab.state` - a lab's state file, the names it owns, a node's environment.
- :mod:`testbed.lab.lifecycle` - ``up``, ``down``, ``install-cni``, ``status``.
- :mod:`testbed.lab.supervisor` - the detached process that builds and holds a lab.
- :mod:`testbed.lab.clean` - remove everything a lab made, from its state file alone.
- :mod:`testbed.lab.netns` - reach into a node's namespaces from the machine.
- :mod:`testbed.lab.nodeshell` - a shell or one command inside a node.
- ``nodebin/`` - programs first on every node's PATH (``ctr``).
"""
