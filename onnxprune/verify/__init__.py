"""The verify room: the masked reference (the input model with pruned channels zeroed), the float
noise that sets the tolerance, the shapes to run at, bisection of failing groups and `check`."""
