"""The select room: the pruning plan, local/global selection, budgets, allocation strategies and
channel-count rounding."""
