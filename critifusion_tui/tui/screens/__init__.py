"""Screens pushed over the main screen: log, settings, history, help, confirmations."""
