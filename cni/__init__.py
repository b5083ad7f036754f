"""calicolab cni package."""
