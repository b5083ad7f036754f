"""calicolab datastore package."""
