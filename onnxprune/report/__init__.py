"""The report room: the report dictionary, console rendering and plots."""
