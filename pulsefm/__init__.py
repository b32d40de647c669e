"""pulse-fm: open wearable-biosignal foundation models (PPG / ECG)."""

__version__ = "0.1.0"
