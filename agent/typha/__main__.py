"""``python -m agent.typha``."""

from agent.typha.server import main

raise SystemExit(main())
