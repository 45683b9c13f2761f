"""Data: images decoded the way Label Studio shows them, datasets of per-class masks, file formats.

- ``images``: any image file or bytes -> H x W x 3 uint8 RGB (EXIF orientation, 16-bit, alpha, size caps).
- ``dataset``: ``Sample``, ``SegmentationDataset``, in-memory items and deterministic splits.
- ``mask_folder``: a folder of images with class-id mask PNGs and a labels file.
- ``coco``: COCO instance JSON (polygons, RLE, compressed RLE).
- ``polygons``: polygon fill by pixel centres, shared by COCO and Label Studio regions.
- ``synthetic``: synthetic scenes for tests, benchmarks and trials.

Imports nothing else from ``training``.
"""
