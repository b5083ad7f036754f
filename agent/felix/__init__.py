"""Felix: calico-node's dataplane half (tunl0, workload routes, sysctls, iptables, ipsets).

Pure calculation lives in :mod:`agent.felix.calc` (datastore state -> desired
dataplane), drivers that read and change the kernel live in ``tunnel``,
``routes``, ``sysctl``, ``iptables`` and ``ipsets``, and :mod:`agent.felix.daemon`
ties them to the datastore watch.
"""
