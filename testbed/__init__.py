"""calicolab testbed package."""
