"""``python -m agent.csi``: the csi.tigera.io CSI driver (:mod:`agent.csi.driver`)."""

import sys

from agent.csi.driver import main

sys.exit(main())
