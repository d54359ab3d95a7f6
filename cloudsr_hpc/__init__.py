"""CloudSR-HPC: cascaded diffusion super-resolution of geostationary cloud imagery, at HPC scale."""
__version__ = "0.1.0"
