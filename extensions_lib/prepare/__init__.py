"""Dataset preparation: turn a folder of raw pictures into a training folder (crop, split, flip, tags)."""
