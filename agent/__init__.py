"""calicolab agent package."""
