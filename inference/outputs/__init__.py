"""Outputs: ArviZ export, plots, the HTML report and the command line."""
