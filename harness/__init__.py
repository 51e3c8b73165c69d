"""infermatrix harness: turns one config into one measured, recorded cell."""
