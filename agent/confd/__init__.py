"""confd: turn datastore state into the BGP speaker's configuration (BIRD's bird.cfg job)."""

from agent.confd.compute import ConfdError, State, compute, render_bird_cfg

__all__ = ["ConfdError", "State", "compute", "render_bird_cfg"]
