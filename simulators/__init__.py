"""Simulated plants and devices that speak the real protocols."""
