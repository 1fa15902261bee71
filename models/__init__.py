"""Flax models: the NanoGPT-style transformer and the small problems from the course notes."""
