"""Blob storage for command output (local directory; S3-compatible later)."""

from corral.blobs.base import BlobGapError, BlobStore, output_key
from corral.blobs.local import LocalBlobStore

__all__ = ["BlobGapError", "BlobStore", "LocalBlobStore", "output_key"]
