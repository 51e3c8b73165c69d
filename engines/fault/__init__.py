"""An engine that fails on purpose, to check that sweeps (and clusters) survive a bad cell."""
