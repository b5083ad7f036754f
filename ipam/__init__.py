"""calicolab ipam package."""
