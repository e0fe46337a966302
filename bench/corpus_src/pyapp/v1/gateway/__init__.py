"""Sensor gateway: reads local sensors, buffers readings, forwards them upstream."""

__version__ = "1.0.0"
