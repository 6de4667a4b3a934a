"""The version of art-some, in a module of its own: any module reads it without importing the package face."""
__version__ = "0.1.0"
