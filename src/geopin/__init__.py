"""geopin: where on Earth was this photo taken?"""

__version__ = "0.1.0"
