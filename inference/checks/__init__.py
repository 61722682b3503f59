"""The checks behind the verdict: PSIS, curvature, restarts, modes, the NUTS reference."""
