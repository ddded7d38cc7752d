"""ncstudy: neural-collapse study service."""
__version__ = "0.1.0"
