"""Dataset pipeline: kohya folder convention, safe image loading, aspect buckets, caption
augmentation and latent caching.

    scan = scan_dataset("train", reg_dir="reg")            # raises DatasetError if unusable
    for p in scan.problems: print(p)                          # "path: reason" for the UI
    ds = TrainDataset(scan, resolution=512, enable_buckets=True, batch_size=2, seed=1)
    if ds.can_cache_latents:
        ds.cache_latents(vae_encode, disk_dir="cache", cache_key=vae_hash)
    for batch in ds.epoch_batches(epoch):                   # Batch.latents or Batch.pixels
        ...
"""
from .buckets import assign_bucket, make_buckets, resize_and_crop
from .captions import process_caption, split_tags
from .dataset import Batch, EpochBatches, TrainDataset
from .folders import DatasetError, DatasetScan, ImageItem, Problem, Subset, scan_dataset
from .images import IMAGE_EXTENSIONS, ImageLoadError, load_rgb, probe_size

__all__ = [
    "assign_bucket", "make_buckets", "resize_and_crop",
    "process_caption", "split_tags",
    "Batch", "EpochBatches", "TrainDataset",
    "DatasetError", "DatasetScan", "ImageItem", "Problem", "Subset", "scan_dataset",
    "IMAGE_EXTENSIONS", "ImageLoadError", "load_rgb", "probe_size",
]
