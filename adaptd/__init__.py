"""adaptd: an online forecasting daemon for many drifting time series."""

__version__ = "0.1.0"
