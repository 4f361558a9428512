"""The measure room: the gated model (channel masks as inputs), calibration data, activation
statistics, the streaming measurement (engine.py) and its one process pool (pool.py) behind the
sensitivity study and the data-driven allocation strategies."""
