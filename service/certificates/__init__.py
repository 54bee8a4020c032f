"""婚育证明: the origin's registry and lookups, the host's check log."""
