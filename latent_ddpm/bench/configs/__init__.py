"""Architectures of public models, written down so the benchmark can build them with random weights.

Nothing is downloaded: each module records the published config it follows and where it was read.
"""
