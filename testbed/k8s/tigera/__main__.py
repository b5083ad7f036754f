"""``python -m testbed.k8s.tigera``: the operator (what image ``tigera/operator`` runs)."""

from testbed.k8s.tigera.controller import main

raise SystemExit(main())
