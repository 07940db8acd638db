"""Forecasting engines: what observes committed records and answers forecasts."""

from .base import Engine, Forecast, ForecastPoint, NotReady, UnknownSeries

__all__ = ["Engine", "Forecast", "ForecastPoint", "NotReady", "UnknownSeries"]
