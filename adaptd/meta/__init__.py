"""Meta-learning the initializer that drifting series restart from (DESIGN.md §5)."""
