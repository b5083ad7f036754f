"""The Calico release calicolab reproduces: the one place its version is written.

calico-node writes it to ClusterInformation ``default`` (``calicoVersion``), calicoctl
prints it as ``Client Version``, the install manifest's images carry it as their tag and
the CNI plugin names it in its ``VERSION`` answer.
"""

CALICO_VERSION = "v3.28.1"
#: the commit of the v3.28.1 tag in projectcalico/calico (calico.md), calicoctl's ``Git commit``
GIT_REVISION = "6018563"
