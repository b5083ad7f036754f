"""Labs spanning several machines: other hosts over SSH, segments between them over VXLAN.

- :mod:`testbed.multihost.hosts` - a machine of the lab: this one, or another over SSH (paramiko).
- :mod:`testbed.multihost.vxlan` - segments spanning machines: kernel VXLAN between them.
- :mod:`testbed.multihost.controller` - up/down/clean/status of every machine's part; where
  each node is, so exec/shell/kubectl run there.
- :mod:`testbed.multihost.capture` - captures where the nodes are, pcaps pulled back here.
"""
