"""Coefficient sets shipped with the platform (YAML package data; see smartpark.kpi)."""
