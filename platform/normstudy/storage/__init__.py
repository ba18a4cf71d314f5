"""Where a study's files live: one small layer over ``pyarrow.fs`` (local, NFS, s3://, gs://).

The rest of the code never joins paths by hand or assumes a local disk: it asks a `Location`.
"""

from normstudy.storage._location import Location, StorageError, as_location

__all__ = ["Location", "StorageError", "as_location"]
