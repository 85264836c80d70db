"""Patch grids: which visual tokens overlap which pixels, and a compact text form of token masks."""

from __future__ import annotations

import numpy as np


def patch_mask(pixel_mask: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W) boolean pixel mask -> (H/p, W/p) boolean mask, True where a patch holds any set pixel.
    Patches are in raster order, as the visual tokens of a ViT."""
    height, width = pixel_mask.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide the mask size {pixel_mask.shape}")
    blocks = pixel_mask.reshape(height // patch_size, patch_size, width // patch_size, patch_size)
    return blocks.any(axis=(1, 3))


def mask_to_rows(mask: np.ndarray) -> list[str]:
    """Boolean (rows, cols) mask -> one '0'/'1' string per row (the JSONL form)."""
    return ["".join("1" if v else "0" for v in row) for row in mask]


def rows_to_mask(rows: list[str]) -> np.ndarray:
    """Inverse of mask_to_rows."""
    return np.array([[c == "1" for c in row] for row in rows], dtype=bool).reshape(len(rows), -1)
