"""Scheduling: one pure decision function over one snapshot (decide.py, placement.py, and the
snapshot and step types), and the driver that carries its steps out (driver.py)."""
