"""bidsdeface: de-identify head MRI, CT and PET in BIDS datasets."""

__version__ = "0.1.0"

__all__ = ["__version__"]
