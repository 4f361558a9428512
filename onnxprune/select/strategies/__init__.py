"""The built-in allocation strategies, one module each; each registers itself in
`select.allocation.STRATEGIES`, which imports them (onnxprune/registry.py `BUILTINS`) when first read.
Nothing imports these modules for their side effects."""
