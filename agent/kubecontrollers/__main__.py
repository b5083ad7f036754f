"""``python -m agent.kubecontrollers``."""

from agent.kubecontrollers.main import main

raise SystemExit(main())
