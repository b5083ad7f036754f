"""The BGP speaker doing BIRD's job in calico-node: codecs, FSM, RIB, kernel routes, service."""
