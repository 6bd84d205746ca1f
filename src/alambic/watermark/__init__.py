"""Watermarks: keyed schemes that mark what the teacher writes, and detect the mark with exact p-values."""

from alambic.watermark.schemes import SCHEMES, AaronsonScheme, Detection, KirchenbauerScheme, unique_pairs

__all__ = ["SCHEMES", "AaronsonScheme", "Detection", "KirchenbauerScheme", "unique_pairs"]
