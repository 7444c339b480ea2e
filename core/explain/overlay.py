"""Draw a heatmap over an image with an OpenCV colormap, for display and PNG export."""

from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA}


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 RGB."""
    grey = np.clip(heatmap * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a coloured heatmap (resized to the image) over an RGB uint8 image."""
    h, w = rgb.shape[:2]
    if heatmap.shape != (h, w):
        heatmap = cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(colorize(heatmap, colormap), float(alpha), rgb, 1.0 - float(alpha), 0.0)


def panels(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
           display: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, coloured heatmap, overlay), the image scaled up by a whole factor (nearest neighbour, so its
    pixels stay visible) to about `display` px and the heatmap resized to it."""
    scale = max(1, display // max(rgb.shape[:2]))
    big = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    heat = cv2.resize(heatmap.astype(np.float32), big.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return big, colorize(heat, colormap), overlay(big, heat, alpha, colormap)


def triptych(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
             display: int = 224) -> np.ndarray:
    """Original | heatmap | overlay side by side in one image, each scaled up to `display` px for viewing."""
    big, heat, over = panels(rgb, heatmap, alpha, colormap, display)
    gap = np.full((big.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([big, gap, heat, gap, over], axis=1)


CAPTION_SCALE = 0.45  # Hershey font scale of the caption strip (about 9 px a character)
CAPTION_LINE = 18  # px per caption line
CAPTION_PAD = 6


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only: '·' becomes '|', other characters '?'."""
    return "".join(c if 32 <= ord(c) < 127 else ("|" if c == "·" else "?") for c in text)


def _wrap(text: str, width_px: int) -> list[str]:
    lines, line = [], ""
    for word in _ascii(text).split(" "):
        trial = f"{line} {word}".strip()
        if line and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, CAPTION_SCALE, 1)[0][0] > width_px:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def with_caption(rgb: np.ndarray, lines: list[str], min_width: int = 320) -> np.ndarray:
    """The image over a white strip carrying `lines` (wrapped to the width), so a downloaded overlay says what it
    shows wherever it ends up. Images narrower than `min_width` are centred on a white margin first."""
    h, w = rgb.shape[:2]
    width = max(w, min_width)
    canvas = np.full((h, width, 3), 255, np.uint8)
    left = (width - w) // 2
    canvas[:, left:left + w] = rgb
    wrapped = [part for line in lines for part in _wrap(line, width - 2 * CAPTION_PAD)]
    strip = np.full((CAPTION_PAD * 2 + CAPTION_LINE * len(wrapped), width, 3), 255, np.uint8)
    for i, line in enumerate(wrapped):
        cv2.putText(strip, line, (CAPTION_PAD, CAPTION_PAD + CAPTION_LINE * (i + 1) - 5), cv2.FONT_HERSHEY_SIMPLEX,
                    CAPTION_SCALE, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([canvas, strip], axis=0)
