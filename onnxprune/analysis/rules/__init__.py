"""Channel rules, one module per family of ops; each rule says how an op maps channels from its
inputs to its outputs and how `apply_plan` rewrites it."""
