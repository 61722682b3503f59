"""The engine: the target, guide families, optimization, stopping, the result."""
