"""The measure room: the gated model (channel masks as inputs), calibration data, activation
statistics and the streaming measurement behind `sensitivity` and the data-driven strategies."""
