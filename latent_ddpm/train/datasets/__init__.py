"""Builders of the data sets shipped in ``latent_ddpm/data``: each rebuilds its array reproducibly from sources
a package manager installs (``python -m latent_ddpm.train.datasets.<name> --help``)."""
