"""FLAME motion: the layout of a motion frame (spec) and the rotation conversions it needs."""
