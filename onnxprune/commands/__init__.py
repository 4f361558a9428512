"""The subcommands of `onnxprune`, one module each (prune, analyze, sensitivity, finetune, check,
bench, profile, ops), all built the same way: a `base.Command` subclass registered with
`@SUBCOMMANDS.register(name)`. Options that several commands share are in `options.py`; the
modules are listed under "subcommand" in `onnxprune/registry.py`.
"""
