"""Golden numerics, the functional machine model and the float32 reference."""
